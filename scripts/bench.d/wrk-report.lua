-- wrk script for scripts/bench. With WRK_PATHS set to a file of request paths (one a line),
-- every connection cycles through them (each wrk thread starting at a different offset);
-- otherwise wrk sends the URL's own request. At the end it prints one machine-readable line:
--   RESULT <requests> <bytes> <seconds> <p50 us> <p99 us> <connect> <read> <write> <status> <timeout>
-- (status counts non-2xx/3xx responses, which make a measurement invalid).
local paths_file = os.getenv("WRK_PATHS")
if paths_file and paths_file ~= "" then
  local paths = {}
  for line in io.lines(paths_file) do
    if line ~= "" then paths[#paths + 1] = line end
  end
  local i = 0
  init = function(args)
    -- Spread the threads over the list, so they do not ask for the same path in lockstep.
    i = math.random(#paths)
  end
  request = function()
    i = i % #paths + 1
    return wrk.format("GET", paths[i])
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.6f %d %d %d %d %d %d %d\n",
    summary.requests, summary.bytes, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
