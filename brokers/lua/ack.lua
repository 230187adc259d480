-- Acknowledge processed entries and delete them, so acked entries never accumulate.
-- Acking needs no lease: the work is done, and an entry acked twice is a no-op.
--
-- KEYS[1] stream, KEYS[2] state hash, KEYS[3..] views of the acked messages (deleted)
-- ARGV[1] group, ARGV[2] full batch size (for the batch limit's slow start), ARGV[3..] ids
local ids = {unpack(ARGV, 3)}
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[2], 'a:' .. id)
end
redis.call('HDEL', KEYS[2], 'retry_at')
if #KEYS > 2 then
  redis.call('DEL', unpack(KEYS, 3))
end
-- After a batch was split, grow the batch limit back (slow start) as batches succeed.
local limit = tonumber(redis.call('HGET', KEYS[2], 'batch_limit') or '0')
if limit > 0 then
  if limit * 2 >= tonumber(ARGV[2]) then
    redis.call('HDEL', KEYS[2], 'batch_limit')
  else
    redis.call('HSET', KEYS[2], 'batch_limit', limit * 2)
  end
end
return #ids
