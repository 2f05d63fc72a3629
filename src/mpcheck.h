/* Structural check of untrusted msgpack bytes, shared by every decoder
 * (gossip packets, Raft commands and snapshots, executor frames).
 *
 * msgpack_unpack_next sizes its memory zone from the container counts a
 * message declares before it looks at the data, so 5 bytes claiming a
 * 2^32-element array make it try to allocate ~100 GB. mp_check walks the
 * bytes first without allocating: every length must fit in the bytes that
 * remain, every declared element needs at least one byte, nesting is
 * bounded. */
#ifndef KILN_MPCHECK_H_
#define KILN_MPCHECK_H_

#include <stddef.h>

#define MP_CHECK_DEPTH_MAX 32

/* Check that buf starts with one complete, well-formed msgpack object
 * nested at most max_depth (<= MP_CHECK_DEPTH_MAX) deep. On success returns
 * 0 and sets *objlen to the object's length (bytes after it are the
 * caller's business); otherwise ERR_MALFORMED. */
int mp_check(const void *buf, size_t len, unsigned max_depth, size_t *objlen);

#endif /* KILN_MPCHECK_H_ */
