-- The requests of bench/run.py, for wrk:
--   BENCH_TOKEN=TOKEN wrk ... -s bench/wrk.lua URL -- TARGET OPERATION KEYS
-- TARGET is hub (secrets-hub), bao (OpenBao KV v2 at secret/) or floor (bench/floor_app.py);
-- OPERATION is read, list or write; KEYS is how many BENCH_KEY_nnnnn secrets were filled.
-- done() prints one line `BENCH {json}` that run.py parses.

local threads = {}

function setup(thread)
  -- Threads start at different keys, so they do not walk the same rows in step.
  thread:set("counter", #threads * 7919)
  table.insert(threads, thread)
end

local target, operation, keys, headers

function init(args)
  target, operation, keys = args[1], args[2], tonumber(args[3])
  local token = assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN is not set")  -- not an argument: ps shows those
  if target == "bao" then
    headers = {["X-Vault-Token"] = token}
  else
    headers = {["Authorization"] = "Bearer " .. token}
  end
  headers["Content-Type"] = "application/json"
end

local function next_key()
  counter = counter + 1
  return string.format("BENCH_KEY_%05d", counter % keys)
end

-- A write stores the value the key was filled with (run.py's value_of): still a new version, sealed and
-- audited, on both servers, and later rows can still check every value they read.
local function filled_value()
  return string.format("bench-value-%05d-%s", counter % keys, string.rep("v", 32))
end

-- Each operation's method, path and body, per server; the floor answers the hub's read path.
local function hub_request(operation)
  if operation == "read" then return "GET", "/api/secrets/" .. next_key() end
  if operation == "list" then return "GET", "/api/secrets" end
  return "PUT", "/api/secrets/" .. next_key(), string.format('{"value":"%s"}', filled_value())
end

local function bao_request(operation)
  if operation == "read" then return "GET", "/v1/secret/data/" .. next_key() end
  if operation == "list" then return "GET", "/v1/secret/metadata/?list=true" end
  return "POST", "/v1/secret/data/" .. next_key(), string.format('{"data":{"value":"%s"}}', filled_value())
end

function request()
  local method, path, body = (target == "bao" and bao_request or hub_request)(operation)
  return wrk.format(method, path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  -- errors.status counts responses with a status of 400 or more; the others are socket errors and timeouts.
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %.0f, "p99_us": %.0f, ' ..
    '"bad_status": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
