-- wrk script for the bench. Arguments after the URL: `-- DEPTH MAX`.
-- DEPTH requests are pipelined in each write. After about MAX requests (0: no limit)
-- the thread raises SIGINT in its own process, which makes wrk stop at once and report
-- the real elapsed time (wrk.thread:stop() alone would leave wrk sleeping until -d).
-- Counting in request() (once per write) costs far less than a response() hook.
local ffi = require("ffi")
ffi.cdef [[ int kill(int pid, int sig); int getpid(void); ]]

local depth, max, sent, req, stopping = 1, 0, 0, nil, false

function init(args)
   depth = tonumber(args[1] or "1")
   max = tonumber(args[2] or "0")
   local r = {}
   for i = 1, depth do r[i] = wrk.format() end
   req = table.concat(r)
end

function request()
   sent = sent + depth
   if max > 0 and sent >= max and not stopping then
      stopping = true
      ffi.C.kill(ffi.C.getpid(), 2)  -- the main thread wakes, stops and reports
      wrk.thread:stop()               -- this thread's loop stops now, not at its next tick
   end
   return req
end
