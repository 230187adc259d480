-- Put a dead-lettered message back at the tail of its original partition, with the same
-- message (id, options) and sequence number, and remove its dead-letter entry if it is
-- still in the dead-letter stream. For a message kept in the "where" hash, running it twice
-- (a reply lost) adds nothing the second time: the hash says where the message went.
--
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] the "where" hash
-- ARGV[1] dead-letter entry id, ARGV[2] encoded message ("" : take it from the dead
-- letter), ARGV[3] seq (with ARGV[2]), ARGV[4] the message's "where" field ("" : none)
-- Returns the new stream id (or the one of an earlier run), or false when the message is
-- given nowhere (no such dead letter and none passed).
local field = ARGV[4]
if field ~= '' then
  -- "<entry id> <seq>": back in the partition stream already (an earlier run)
  local where = redis.call('HGET', KEYS[3], field)
  if where and string.sub(where, 1, 2) ~= 'd ' and string.sub(where, 1, 2) ~= '- ' then
    return string.match(where, '^(%S+)')
  end
end
local m, seq = ARGV[2], ARGV[3]
local found = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #found > 0 and m == '' then
  local fields = found[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then m = fields[i + 1] end
    if fields[i] == 'seq' then seq = fields[i + 1] end
  end
end
if m == '' then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', 'm', m, 'seq', seq)
if #found > 0 then
  redis.call('XDEL', KEYS[2], ARGV[1])
end
if field ~= '' then
  redis.call('HSET', KEYS[3], field, id .. ' ' .. seq)
end
return id
