-- Acknowledge processed entries and delete them, so acked entries never accumulate, with
-- their state fields and their places in the "where" hash; idempotency records kept until the
-- message is done now expire after the grace period (a repeat racing with the ack is still
-- answered from Redis meanwhile). Acking needs no lease: the work is done. Running it
-- twice changes nothing the second time.
--
-- KEYS[1] stream, KEYS[2] state hash, KEYS[3] "where" hash, KEYS[4..] idempotency records
-- to expire
-- ARGV[1] group, ARGV[2] grace in ms, ARGV[3] f, ARGV[4 .. 3+f] "where" fields to delete,
-- ARGV[4+f ..] entry ids
local forget = tonumber(ARGV[3])
local ids = {unpack(ARGV, 4 + forget)}
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
local fields = {}
for _, id in ipairs(ids) do
  fields[#fields + 1] = 'a:' .. id
  fields[#fields + 1] = 's:' .. id
  fields[#fields + 1] = 'u:' .. id
  fields[#fields + 1] = 'r:' .. id
  if #fields >= 4000 then
    redis.call('HDEL', KEYS[2], unpack(fields))
    fields = {}
  end
end
if #fields > 0 then
  redis.call('HDEL', KEYS[2], unpack(fields))
end
if forget > 0 then
  redis.call('HDEL', KEYS[3], unpack(ARGV, 4, 3 + forget))
end
for i = 4, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return #ids
