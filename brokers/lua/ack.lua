-- Acknowledge processed entries and delete them, so acked entries never accumulate, with
-- their state fields and the views of their messages. Acking needs no lease: the work is
-- done. Running it twice changes nothing the second time.
--
-- KEYS[1] stream, KEYS[2] state hash, KEYS[3..] views of the acked messages (deleted)
-- ARGV[1] group, ARGV[2..] entry ids
local ids = {unpack(ARGV, 2)}
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
if #KEYS > 2 then
  redis.call('DEL', unpack(KEYS, 3))
end
return #ids
