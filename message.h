/* message.h - how every error and warning is written: as one line.
 *
 * Messages quote what they are about: a file name, a tensor name, a GGUF
 * string, a regex, a chat role, an argument. Those come from files and
 * command lines, so they can hold a newline or an escape sequence that would
 * split the line or drive the terminal. Every error buffer of the engine and
 * every line the programs print goes through message_format, which writes
 * control characters (below 0x20, and 0x7f) as \n, \r, \t or \xNN. A
 * backslash is left as it is, so formatting a message twice (a library error
 * quoted again by a program) changes nothing. Bytes of 0x80 and above pass
 * through: they are UTF-8 (or invalid UTF-8), never a line break.
 */
#ifndef MESSAGE_H
#define MESSAGE_H

#include <stdarg.h>
#include <stdio.h>

/* Formats fmt into dst (cap bytes, always NUL-terminated when cap > 0),
   control characters escaped; a message too long for dst is cut. */
static void message_format(char *dst, size_t cap, const char *fmt, va_list ap) {
    if (!dst || cap == 0) return;
    char raw[1024];
    vsnprintf(raw, sizeof raw, fmt, ap);
    size_t n = 0;
    for (const unsigned char *s = (const unsigned char *)raw; *s; s++) {
        char esc[5];
        size_t len;
        if (*s >= 0x20 && *s != 0x7f) { esc[0] = (char)*s; len = 1; }
        else if (*s == '\n') { esc[0] = '\\'; esc[1] = 'n'; len = 2; }
        else if (*s == '\r') { esc[0] = '\\'; esc[1] = 'r'; len = 2; }
        else if (*s == '\t') { esc[0] = '\\'; esc[1] = 't'; len = 2; }
        else { snprintf(esc, sizeof esc, "\\x%02x", *s); len = 4; }
        if (n + len >= cap) break;
        for (size_t i = 0; i < len; i++) dst[n++] = esc[i];
    }
    dst[n] = '\0';
}

/* One line on f: the prefix ("error: ", "warning: "), the message, a newline. */
static void message_print(FILE *f, const char *prefix, const char *fmt, va_list ap) {
    char line[1024];
    message_format(line, sizeof line, fmt, ap);
    fprintf(f, "%s%s\n", prefix, line);
}

#endif
