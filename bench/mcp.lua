-- MCP get_secret calls for wrk: one connection per wrk thread, each thread one MCP client.
--   BENCH_TOKEN=TOKEN wrk -t8 -c8 ... -s bench/mcp.lua URL/mcp -- PROTOCOL_VERSION KEYS
-- The server is stateless: run.py has each client probe it (server/discover) before wrk starts, and every
-- call carries the headers and the `_meta` envelope of the stateless protocol, as the SDK's client sends
-- them. Every answer is checked: a call whose body lacks the value run.py filled for that key counts as
-- wrong. done() prints one line `BENCH {json}` that run.py parses.

local threads = {}

function setup(thread)
  thread:set("number", #threads)
  table.insert(threads, thread)
end

local headers, keys, envelope, pending_key
wrong = 0  -- global, so that done() can read it from each thread

function init(args)
  keys = tonumber(args[2])
  headers = {
    ["Authorization"] = "Bearer " .. assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN is not set"),  -- see wrk.lua
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json, text/event-stream",
    ["MCP-Protocol-Version"] = args[1],
    ["Mcp-Method"] = "tools/call",
    ["Mcp-Name"] = "get_secret",
  }
  -- run.py's mcp_envelope()
  envelope = string.format(
    '{"io.modelcontextprotocol/protocolVersion":"%s","io.modelcontextprotocol/clientInfo":' ..
    '{"name":"bench-client-%d","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}', args[1], number)
  counter = number * 7919
end

-- The value run.py's value_of() filled the key with.
local function filled_value(index)
  return string.format("bench-value-%05d-%s", index, string.rep("v", 32))
end

function request()
  counter = counter + 1
  pending_key = counter % keys
  local body = string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"get_secret","arguments":{"key":"BENCH_KEY_%05d"},' ..
    '"_meta":%s}}', counter, pending_key, envelope)
  return wrk.format("POST", nil, headers, body)
end

function response(status, response_headers, body)
  if status ~= 200 or not string.find(body, '"value":"' .. filled_value(pending_key) .. '"', 1, true)
      or string.find(body, '"isError":true', 1, true) then
    wrong = wrong + 1
  end
end

function done(summary, latency, requests)
  local total_wrong = 0
  for _, thread in ipairs(threads) do
    total_wrong = total_wrong + thread:get("wrong")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %.0f, "p99_us": %.0f, ' ..
    '"bad_status": %d, "socket_errors": %d, "wrong": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout, total_wrong))
end
