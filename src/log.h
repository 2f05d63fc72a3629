/* Levelled logger writing one line per event to stderr. */
#ifndef KILN_LOG_H_
#define KILN_LOG_H_

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

/* Process-wide settings; set once in main before the loop runs. */
void log_set_level(enum log_level level);
void log_set_prefix(const char *prefix);
enum log_level log_get_level(void);

/* Parse "debug|info|warn|error|off"; returns 0 on success. */
int log_parse_level(const char *s, enum log_level *out);

void log_write(enum log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOGD(mod, ...) log_write(LOG_DEBUG, mod, __VA_ARGS__)
#define LOGI(mod, ...) log_write(LOG_INFO, mod, __VA_ARGS__)
#define LOGW(mod, ...) log_write(LOG_WARN, mod, __VA_ARGS__)
#define LOGE(mod, ...) log_write(LOG_ERROR, mod, __VA_ARGS__)

#endif /* KILN_LOG_H_ */
