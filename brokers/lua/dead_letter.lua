-- Move one entry to the partition's dead-letter stream and ack it, in one step, so a crash
-- can neither lose it nor leave it both dead-lettered and pending. Running it twice (a
-- reply lost) writes no second dead letter: the entry is acked already. If the message
-- is kept in the "where" hash, it then says "d <dead-letter id> <seq>".
--
-- KEYS[1] stream, KEYS[2] state hash, KEYS[3] dead-letter stream, KEYS[4] lease,
-- KEYS[5] the "where" hash
-- ARGV[1] group, ARGV[2] lease token ("" : no lease check), ARGV[3] entry id,
-- ARGV[4] encoded message, ARGV[5] seq, ARGV[6] reason, ARGV[7] error,
-- ARGV[8] traceback, ARGV[9] attempts, ARGV[10] partition, ARGV[11] queue,
-- ARGV[12] the message's field in the "where" hash ("" : not kept)
-- Returns the dead-letter entry id, "" when the entry was acked already, or false when
-- the lease is not held.
if ARGV[2] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[2] then
  return false
end
local id = ARGV[3]
if redis.call('XACK', KEYS[1], ARGV[1], id) == 0 then
  return ''
end
redis.call('XDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], 'a:' .. id, 's:' .. id, 'u:' .. id, 'r:' .. id)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead_id = redis.call('XADD', KEYS[3], '*',
  'm', ARGV[4], 'seq', ARGV[5], 'stream_id', id, 'reason', ARGV[6],
  'error', ARGV[7], 'traceback', ARGV[8], 'attempts', ARGV[9],
  'partition', ARGV[10], 'queue', ARGV[11], 'time', now)
if ARGV[12] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[12], 'd ' .. dead_id .. ' ' .. ARGV[5])
end
return dead_id
