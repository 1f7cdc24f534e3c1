-- wrk script for loadtest/bench.py: POST the JSON bodies of the file $WRK_BODIES (one per line)
-- in turn to the URL's path, and print one machine-readable line of results at the end.
-- No response() callback: defining one makes wrk parse every body, which costs its CPU.

local bodies = {}
local next_body = 0

init = function(args)
  for line in io.lines(os.getenv("WRK_BODIES")) do
    bodies[#bodies + 1] = line
  end
  -- threads start at different bodies
  next_body = math.random(#bodies) - 1
end

request = function()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[next_body])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean,
    latency.max))
end
