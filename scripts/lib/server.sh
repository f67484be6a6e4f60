# Shared by the bench scripts that start one server at a time and keep its
# pid in SERVER_PID (bench-echo.sh, bench-http.sh). Sourced, not run.

# Stops the server started last, if any, and waits for it.
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
