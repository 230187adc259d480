-- Put a dead letter back at the tail of its original partition, with the same message
-- (id, options) and sequence number, and remove it from the dead-letter stream.
--
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV[1] dead-letter entry id
-- Returns the new stream id, or false when no such dead letter exists.
local found = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local m, seq = nil, ''
for i = 1, #fields, 2 do
  if fields[i] == 'm' then m = fields[i + 1] end
  if fields[i] == 'seq' then seq = fields[i + 1] end
end
local id = redis.call('XADD', KEYS[1], '*', 'm', m, 'seq', seq)
redis.call('XDEL', KEYS[2], ARGV[1])
return id
