-- Claim, oldest first, the pending entries that earlier owners of a partition left
-- (work of a consumer that died or handed the partition over), for its lease holder only.
--
-- KEYS[1] stream, KEYS[2] state hash, KEYS[3] lease
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] lease token,
-- ARGV[4] where to start ('-', or '(' followed by the last id claimed), ARGV[5] count
-- Returns {status, cursor, entries, details}: status 'lost' (not the lease holder),
-- 'more' (a full page: claim again after cursor) or 'done'. Per claimed entry, details
-- holds {attempts, starts, released_at, retry_in_ms, deliveries} (see the state hash in
-- docs/broker.md); deliveries counts this one.
if redis.call('GET', KEYS[3]) ~= ARGV[3] then
  return {'lost', '', {}, {}}
end
local count = tonumber(ARGV[5])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], '+', count)
if #pending == 0 then
  return {'done', '', {}, {}}
end
local ids, delivered = {}, {}
for i, p in ipairs(pending) do
  ids[i] = p[1]
  delivered[p[1]] = tonumber(p[4])
end
-- Entries deleted from the stream meanwhile are dropped from the pending list here.
local entries = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local claimed, details = {}, {}
for _, entry in ipairs(entries) do
  if type(entry) == 'table' then
    local id = entry[1]
    local f = redis.call('HMGET', KEYS[2], 'a:' .. id, 's:' .. id, 'u:' .. id, 'r:' .. id)
    local retry_in = math.max(0, tonumber(f[4] or '0') - now)
    claimed[#claimed + 1] = entry
    details[#details + 1] = {
      tonumber(f[1] or '0'), tonumber(f[2] or '0'), tonumber(f[3] or '0'), retry_in, delivered[id] + 1
    }
  end
end
local status = 'more'
if #pending < count then
  status = 'done'
end
return {status, pending[#pending][1], claimed, details}
