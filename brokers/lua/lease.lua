-- Acquire or renew a partition lease ("acquire"), or release it ("release").
--
-- On release the holder notes which pending entries it held and never started, with their
-- delivery counts, so the next owner does not suspect them of having crashed a process.
--
-- KEYS[1] lease, KEYS[2] state hash
-- ARGV[1] action, ARGV[2] token, ARGV[3] ttl in ms, ARGV[4..] (release) pairs:
-- entry id, deliveries
-- Returns 1 when the caller holds (or released) the lease, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == 'release' then
  if holder == ARGV[2] then
    for i = 4, #ARGV, 2 do
      redis.call('HSET', KEYS[2], 'u:' .. ARGV[i], ARGV[i + 1])
    end
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if holder == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
