-- wrk script for pipelined HTTP/1.1: every write carries DEPTH requests for
-- PATH (environment variables; defaults 16 and "/"), and wrk counts each
-- response. Used by scripts/bench-http.sh.
local depth = tonumber(os.getenv("DEPTH") or "16")
local path = os.getenv("PATH_") or "/"

init = function(args)
    local r = {}
    for i = 1, depth do
        r[i] = wrk.format("GET", path)
    end
    req = table.concat(r)
end

request = function()
    return req
end
