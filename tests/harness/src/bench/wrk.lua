-- wrk script for cell-router-bench: every request carries a bearer token from
-- a file (one per line), each wrk thread rotating over its own share of the
-- lines; optional fixed headers. Requests are formatted once in init(), so the
-- client spends the same little per request whatever the configuration.
--
-- wrk -s wrk.lua URL -- <token file> <wrk threads> <start> ["name: value"]...
--
-- <start>: the line each thread starts at (rounded to its share), so
-- successive runs over one pool of unique tokens start in different places.
-- A header value "{cells:N}" names cell (line mod N) for each token line
-- (cell-a, cell-b, cell-c, cell-0003, ...): the plain gateway's clients
-- spread over N cells as the router's tenants do.
-- done() prints one line: BENCH_RESULT {json}

-- CELL_ROUTER_WRK_THINK_MS=N: each connection waits N ms before each request,
-- a paced load below saturation (latency is still timed from the send).
local think_ms = tonumber(os.getenv("CELL_ROUTER_WRK_THINK_MS") or "") or 0
if think_ms > 0 then
  function delay()
    return think_ms
  end
end

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local prepared = {}

local function cell_id(i)
  if i < 3 then
    return ({"cell-a", "cell-b", "cell-c"})[i + 1]
  end
  return string.format("cell-%04d", i)
end
-- Globals, so done() can read them through thread:get().
count = 0
wraps = 0
local at = 0

function init(args)
  local file, stride, start = args[1], tonumber(args[2]), tonumber(args[3])
  local headers = {}
  local spread = {}
  for i = 4, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    local cells = value:match("^{cells:(%d+)}$")
    if cells then
      spread[name] = tonumber(cells)
    else
      headers[name] = value
    end
  end
  local line = 0
  for token in io.lines(file) do
    if token ~= "" then
      if line % stride == id then
        headers["Authorization"] = "Bearer " .. token
        for name, cells in pairs(spread) do
          headers[name] = cell_id(line % cells)
        end
        count = count + 1
        prepared[count] = wrk.format("GET", "/", headers)
      end
      line = line + 1
    end
  end
  if count == 0 then
    error("no tokens for thread " .. id .. " in " .. file)
  end
  at = math.floor(start / stride) % count
end

function request()
  at = at + 1
  if at > count then
    at = 1
    wraps = wraps + 1
  end
  return prepared[at]
end

function done(summary, latency, requests)
  local wrapped, tokens = 0, 0
  for _, thread in ipairs(threads) do
    wrapped = wrapped + (thread:get("wraps") or 0)
    tokens = tokens + (thread:get("count") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d,"wraps":%d,"tokens":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max, wrapped, tokens))
end
