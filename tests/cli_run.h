// cli_run.h - what the tests that drive the flashgmm binary share: a shell
// command run to completion with its output, and a file read whole.
#ifndef FGMM_TESTS_CLI_RUN_H
#define FGMM_TESTS_CLI_RUN_H

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

struct Result {
    int code;        // the exit status; -1 when it did not exit normally
    std::string out; // stdout and stderr together
};

inline Result run_shell(const std::string &cmd)
{
    FILE *p = popen((cmd + " 2>&1").c_str(), "r");
    Result r{-1, ""};
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    int st = pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

// The binary beside the test (a data dependency on //tools:flashgmm).
inline Result run(const std::string &args) { return run_shell("tools/flashgmm " + args); }

// The whole file; empty when it cannot be read.
inline std::string read_all(const std::string &path)
{
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

#endif
