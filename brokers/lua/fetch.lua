-- Fetch the next work of one partition for its lease holder, strictly in stream order.
--
-- Pending entries (a retry waiting in place, or work left by a previous owner) come
-- first: they are claimed by this consumer, oldest first. Only when nothing is pending
-- are new entries read. Due delayed entries are moved into the stream first.
--
-- KEYS[1] stream, KEYS[2] state hash, KEYS[3] delayed zset, KEYS[4] lease
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] lease token
-- Returns {kind, wait_ms, next_due_ms, entries, attempts, deliveries} where kind is
-- 'lost' (not the lease holder), 'wait' (head is backing off for wait_ms), 'claimed',
-- 'new' or 'empty'; next_due_ms is -1 when nothing is delayed.
if redis.call('GET', KEYS[4]) ~= ARGV[4] then
  return {'lost', 0, -1, {}, {}, {}}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
  local sep = string.find(member, '|', 1, true)
  redis.call('XADD', KEYS[1], '*', 'm', string.sub(member, sep + 1), 'seq', string.sub(member, 1, sep - 1))
  redis.call('ZREM', KEYS[3], member)
end
local next_due = -1
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(0, tonumber(first[2]) - now)
end

local count = tonumber(ARGV[3])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', count)
if #pending > 0 then
  local retry_at = tonumber(redis.call('HGET', KEYS[2], 'retry_at') or '0')
  if retry_at > now then
    return {'wait', retry_at - now, next_due, {}, {}, {}}
  end
  local limit = tonumber(redis.call('HGET', KEYS[2], 'batch_limit') or count)
  if limit < count then
    count = limit
  end
  local ids = {}
  local deliveries = {}
  for i = 1, math.min(count, #pending) do
    ids[i] = pending[i][1]
    deliveries[i] = pending[i][4] + 1
  end
  local entries = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
  local attempts = {}
  for i, entry in ipairs(entries) do
    attempts[i] = tonumber(redis.call('HGET', KEYS[2], 'a:' .. entry[1]) or '0')
  end
  return {'claimed', 0, next_due, entries, attempts, deliveries}
end

local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, 'STREAMS', KEYS[1], '>')
if not read then
  return {'empty', 0, next_due, {}, {}, {}}
end
return {'new', 0, next_due, read[1][2], {}, {}}
