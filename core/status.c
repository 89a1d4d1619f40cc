/*
 * status.c - status names and error reports (core/status.h).
 */
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

int fgmm_is_error(fgmm_status s) { return s != FGMM_OK; }

const char *fgmm_status_name(fgmm_status s)
{
    switch (s) {
    case FGMM_OK: return "ok";
    case FGMM_ERR_ARGUMENT: return "invalid argument";
    case FGMM_ERR_IO: return "i/o error";
    case FGMM_ERR_FORMAT: return "format error";
    case FGMM_ERR_DATA: return "data error";
    case FGMM_ERR_NO_MEMORY: return "out of memory";
    case FGMM_ERR_EXISTS: return "already exists";
    case FGMM_ERR_DEVICE: return "device error";
    case FGMM_ERR_UNSUPPORTED: return "unsupported";
    case FGMM_ERR_INTERNAL: return "internal error";
    default: return "unknown status";
    }
}

fgmm_status fgmm_fail(fgmm_error *err, fgmm_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
        /* Messages are one line by contract: fold any newline a caller
         * interpolated (a file name, a strerror) into a space. */
        for (char *p = err->msg; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
    }
    return code;
}
