/* Open-addressing hash maps keyed by string or uint64. */
#include "map.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "util.h"

#define MAP_MIN_CAP 8

static uint64_t hash_str(const char *key)
{
    uint64_t h = hash64(key, strlen(key), 0);
    return h == 0 ? 1 : h;
}

static uint64_t hash_u64(uint64_t key)
{
    uint64_t h = hash64(&key, sizeof key, 0);
    return h == 0 ? 1 : h;
}

void map_init(struct map *m, enum map_kind kind)
{
    m->kind = kind;
    m->slots = NULL;
    m->cap = 0;
    m->n = 0;
}

void map_close(struct map *m)
{
    if (m->kind == MAP_STR) {
        for (size_t i = 0; i < m->cap; i++) {
            free(m->slots[i].skey);
        }
    }
    free(m->slots);
    m->slots = NULL;
    m->cap = 0;
    m->n = 0;
}

size_t map_count(const struct map *m)
{
    return m->n;
}

static bool slot_match(const struct map *m,
                       const struct map_slot *s,
                       uint64_t h,
                       const char *skey,
                       uint64_t ukey)
{
    if (s->hash != h) {
        return false;
    }
    if (m->kind == MAP_STR) {
        return strcmp(s->skey, skey) == 0;
    }
    return s->ukey == ukey;
}

/* Index of the slot holding the key, or of the empty slot ending its probe
 * sequence. cap must be non-zero. */
static size_t find(const struct map *m,
                   uint64_t h,
                   const char *skey,
                   uint64_t ukey)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)h & mask;
    while (m->slots[i].hash != 0 &&
           !slot_match(m, &m->slots[i], h, skey, ukey)) {
        i = (i + 1) & mask;
    }
    return i;
}

static int grow(struct map *m)
{
    size_t cap = m->cap == 0 ? MAP_MIN_CAP : m->cap * 2;
    struct map_slot *slots;
    struct map_slot *old = m->slots;
    size_t old_cap = m->cap;
    if (cap < m->cap) {
        return ERR_NOMEM;
    }
    slots = calloc(cap, sizeof *slots);
    if (slots == NULL) {
        return ERR_NOMEM;
    }
    m->slots = slots;
    m->cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].hash != 0) {
            size_t j = (size_t)old[i].hash & (cap - 1);
            while (slots[j].hash != 0) {
                j = (j + 1) & (cap - 1);
            }
            slots[j] = old[i];
        }
    }
    free(old);
    return 0;
}

static int put(struct map *m,
               uint64_t h,
               const char *skey,
               uint64_t ukey,
               void *value,
               void **old)
{
    size_t i;
    char *copy = NULL;
    int rv;
    if (value == NULL) {
        return ERR_INVALID;
    }
    if (m->cap != 0) {
        i = find(m, h, skey, ukey);
        if (m->slots[i].hash != 0) {
            if (old != NULL) {
                *old = m->slots[i].value;
            }
            m->slots[i].value = value;
            return 0;
        }
    }
    /* New key: keep the load factor at or below 3/4. */
    if ((m->n + 1) * 4 > m->cap * 3) {
        rv = grow(m);
        if (rv != 0) {
            return rv;
        }
    }
    if (m->kind == MAP_STR) {
        copy = strdup(skey);
        if (copy == NULL) {
            return ERR_NOMEM;
        }
    }
    i = find(m, h, skey, ukey);
    m->slots[i].hash = h;
    m->slots[i].ukey = ukey;
    m->slots[i].skey = copy;
    m->slots[i].value = value;
    m->n++;
    if (old != NULL) {
        *old = NULL;
    }
    return 0;
}

int map_put_str(struct map *m, const char *key, void *value, void **old)
{
    if (m->kind != MAP_STR || key == NULL) {
        return ERR_INVALID;
    }
    return put(m, hash_str(key), key, 0, value, old);
}

int map_put_u64(struct map *m, uint64_t key, void *value, void **old)
{
    if (m->kind != MAP_U64) {
        return ERR_INVALID;
    }
    return put(m, hash_u64(key), NULL, key, value, old);
}

void *map_get_str(const struct map *m, const char *key)
{
    size_t i;
    if (m->kind != MAP_STR || m->cap == 0 || key == NULL) {
        return NULL;
    }
    i = find(m, hash_str(key), key, 0);
    return m->slots[i].hash != 0 ? m->slots[i].value : NULL;
}

void *map_get_u64(const struct map *m, uint64_t key)
{
    size_t i;
    if (m->kind != MAP_U64 || m->cap == 0) {
        return NULL;
    }
    i = find(m, hash_u64(key), NULL, key);
    return m->slots[i].hash != 0 ? m->slots[i].value : NULL;
}

/* Remove slot i and shift later members of the cluster back so that every
 * probe sequence stays unbroken (no tombstones). */
static void *del_at(struct map *m, size_t i)
{
    size_t mask = m->cap - 1;
    void *value = m->slots[i].value;
    size_t j = i;
    free(m->slots[i].skey);
    for (;;) {
        size_t home;
        j = (j + 1) & mask;
        if (m->slots[j].hash == 0) {
            break;
        }
        home = (size_t)m->slots[j].hash & mask;
        /* Move j into the hole i unless its home lies cyclically in (i, j]. */
        if ((j > i && (home <= i || home > j)) ||
            (j < i && (home <= i && home > j))) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    memset(&m->slots[i], 0, sizeof m->slots[i]);
    m->n--;
    return value;
}

void *map_del_str(struct map *m, const char *key)
{
    size_t i;
    if (m->kind != MAP_STR || m->cap == 0 || key == NULL) {
        return NULL;
    }
    i = find(m, hash_str(key), key, 0);
    return m->slots[i].hash != 0 ? del_at(m, i) : NULL;
}

void *map_del_u64(struct map *m, uint64_t key)
{
    size_t i;
    if (m->kind != MAP_U64 || m->cap == 0) {
        return NULL;
    }
    i = find(m, hash_u64(key), NULL, key);
    return m->slots[i].hash != 0 ? del_at(m, i) : NULL;
}

void map_iter_init(struct map_iter *it, const struct map *m)
{
    it->m = m;
    it->i = 0;
}

bool map_iter_next(struct map_iter *it,
                   const char **skey,
                   uint64_t *ukey,
                   void **value)
{
    while (it->i < it->m->cap) {
        const struct map_slot *s = &it->m->slots[it->i++];
        if (s->hash != 0) {
            if (skey != NULL) {
                *skey = s->skey;
            }
            if (ukey != NULL) {
                *ukey = s->ukey;
            }
            if (value != NULL) {
                *value = s->value;
            }
            return true;
        }
    }
    return false;
}
