-- Enqueue messages of one partition atomically: deduplicate, number, add to the stream (or
-- the partition's delay set), and remember what a repeat or a lookup needs. Either all of
-- it happens or none of it does.
--
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] the partition's "where" hash (message id
-- → where the message is), then per message: KEYS[2i+2] idempotency record, KEYS[2i+3]
-- sequence counter (for i = 1..n; a key not used by that message is the stream's name)
-- ARGV[1] n, then per message 7 values:
--   encoded message;
--   idempotency: "" none, "0" remember until the message is done (acked: then a grace
--     period; dead-lettered: until requeued or forgotten), "<ms>" remember that long;
--   the record's tail ("id|timestamp|fingerprint|correlation id");
--   "1" to number it;
--   the sequence floor for a missing counter ("" : none given);
--   delay in ms (0: enqueue now);
--   the message's field in the "where" hash ("" : not kept), set to "<entry id> <seq>"
--     ("- <seq>" while delayed).
-- ARGV[2 + 7n] "1" when the caller can supply floors for missing counters.
-- Returns {2, key, ...} (the missing counters, nothing done) when floors are needed, else
-- per message {0, stream id, seq} for a new message or {1, record} for a repeat, where
-- record is "<seq>|<id>|<timestamp>|<fingerprint>|<correlation id>".
local n = tonumber(ARGV[1])
local floors_available = ARGV[2 + 7 * n] == '1'

local missing = {}
for i = 1, n do
  local a = 1 + (i - 1) * 7
  if ARGV[a + 4] == '1' and ARGV[a + 5] == '' and floors_available
      and redis.call('EXISTS', KEYS[2 * i + 3]) == 0 then
    missing[#missing + 1] = KEYS[2 * i + 3]
  end
end
if #missing > 0 then
  return {2, unpack(missing)}
end

local now = nil
local replies = {}
for i = 1, n do
  local a = 1 + (i - 1) * 7
  local record_key, counter = KEYS[2 * i + 2], KEYS[2 * i + 3]
  local encoded, remember, tail = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local existing = false
  if remember ~= '' then
    existing = redis.call('GET', record_key)
  end
  if existing then
    replies[i] = {1, existing}
  else
    local seq = ''
    if ARGV[a + 4] == '1' then
      if redis.call('EXISTS', counter) == 0 and ARGV[a + 5] ~= '' then
        redis.call('SET', counter, ARGV[a + 5])
      end
      seq = tostring(redis.call('INCR', counter))
    end
    local id = ''
    local delay = tonumber(ARGV[a + 6])
    if delay > 0 then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', KEYS[2], now + delay, seq .. '|' .. encoded)
    else
      id = redis.call('XADD', KEYS[1], '*', 'm', encoded, 'seq', seq)
    end
    if remember == '0' then
      redis.call('SET', record_key, seq .. '|' .. tail)
    elseif remember ~= '' then
      redis.call('SET', record_key, seq .. '|' .. tail, 'PX', remember)
    end
    if ARGV[a + 7] ~= '' then
      redis.call('HSET', KEYS[3], ARGV[a + 7], (id ~= '' and id or '-') .. ' ' .. seq)
    end
    replies[i] = {0, id, seq}
  end
end
return replies
