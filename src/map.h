/* Small hash maps keyed by string or by uint64 (open addressing, linear
 * probing, backward-shift deletion). Values are borrowed pointers. */
#ifndef KILN_MAP_H_
#define KILN_MAP_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum map_kind { MAP_STR = 1, MAP_U64 = 2 };

struct map_slot
{
    uint64_t hash; /* 0 = empty slot (real hashes are forced non-zero) */
    uint64_t ukey; /* MAP_U64 key */
    char *skey;    /* MAP_STR key: owned copy */
    void *value;   /* borrowed, never NULL in a used slot */
};

/* A map of one key kind. Iteration order is unspecified and must never
 * reach observable output: callers that serialise sort first. */
struct map
{
    enum map_kind kind;
    struct map_slot *slots; /* cap slots, NULL while empty */
    size_t cap;             /* 0 or a power of two */
    size_t n;               /* used slots */
};

/* Initialise an empty map of the given kind (allocates nothing). */
void map_init(struct map *m, enum map_kind kind);

/* Free the slots and the key copies, not the values. The map is empty and
 * usable again afterwards. */
void map_close(struct map *m);

size_t map_count(const struct map *m);

/* Insert or replace. value must not be NULL. If old is non-NULL it receives
 * the replaced value (or NULL when the key was new). Returns 0, ERR_NOMEM
 * (map unchanged) or ERR_INVALID (NULL value or wrong kind). */
int map_put_str(struct map *m, const char *key, void *value, void **old);
int map_put_u64(struct map *m, uint64_t key, void *value, void **old);

/* Look up; NULL if absent. */
void *map_get_str(const struct map *m, const char *key);
void *map_get_u64(const struct map *m, uint64_t key);

/* Remove and return the value, or NULL if absent. Never allocates. */
void *map_del_str(struct map *m, const char *key);
void *map_del_u64(struct map *m, uint64_t key);

/* Iteration: the map must not be modified while iterating. */
struct map_iter
{
    const struct map *m;
    size_t i;
};
void map_iter_init(struct map_iter *it, const struct map *m);
/* Next entry: true and the key (skey for MAP_STR, ukey for MAP_U64; the
 * other may be NULL) and value, or false at the end. */
bool map_iter_next(struct map_iter *it,
                   const char **skey,
                   uint64_t *ukey,
                   void **value);

#endif /* KILN_MAP_H_ */
