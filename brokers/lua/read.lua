-- Read never-delivered entries of partitions, for their lease holder only.
--
-- The lease check is what fences a paused process: one whose lease expired while it was
-- stopped reads nothing when it wakes up, so it can never take entries that its successor
-- must run first. Due delayed entries are moved into the stream before reading. One call
-- may cover several partitions (on a single node; on a cluster, one partition per call).
--
-- KEYS per partition, in triples: stream, delayed zset, lease
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] lease token, ARGV[4..] count per partition
-- Returns per partition {status, next_due_ms, last_id, entries}: status 'lost' (not the
-- lease holder) or 'ok'; next_due_ms is -1 when nothing is delayed; last_id is the newest
-- id delivered to the group (a blocking wait for new entries starts after it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function last_delivered(stream)
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, delivered = nil, nil
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
      if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
    end
    if name == ARGV[1] and delivered then
      return delivered
    end
  end
  return '0-0'
end

local function read(stream, delayed, lease, count)
  if redis.call('GET', lease) ~= ARGV[3] then
    return {'lost', -1, '', {}}
  end
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, member in ipairs(due) do
    local sep = string.find(member, '|', 1, true)
    redis.call('XADD', stream, '*', 'm', string.sub(member, sep + 1), 'seq', string.sub(member, 1, sep - 1))
    redis.call('ZREM', delayed, member)
  end
  local next_due = -1
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if first[2] then
    next_due = math.max(0, tonumber(first[2]) - now)
  end
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, 'STREAMS', stream, '>')
  if got then
    local entries = got[1][2]
    return {'ok', next_due, entries[#entries][1], entries}
  end
  -- Nothing undelivered: everything up to the group's last delivered id has been seen.
  return {'ok', next_due, last_delivered(stream), {}}
end

local replies = {}
for i = 1, #KEYS, 3 do
  replies[#replies + 1] = read(KEYS[i], KEYS[i + 1], KEYS[i + 2], ARGV[3 + (i + 2) / 3])
end
return replies
