/* libFuzzer target: entry decoding, apply and snapshot restore must never
 * crash, leak or return an unexpected code. Not built by default; build:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     tests/fuzz/fuzz_rsm_entry.c src/raft/rsm_cmd.c src/raft/rsm_fsm.c \
 *     src/raft/rsm_snap.c src/raft/rsm_jobs.c src/raft/rsm_runs.c \
 *     src/map.c src/util.c src/err.c src/log.c \
 *     $(pkg-config --cflags --libs msgpack liblz4 raft) -o fuzz_rsm_entry
 *   ./fuzz_rsm_entry -max_len=4096 */
#include <stdint.h>
#include <stdlib.h>

#include "err.h"
#include "log.h"
#include "raft/rsm_fsm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct rsm_fsm *f;
    static uint64_t index;
    struct rsm_cmd *cmds = NULL;
    struct rsm_result res[16];
    unsigned n = 0;
    char errmsg[ERRMSG_SIZE];
    int rv;
    if (f == NULL) {
        log_set_level(LOG_OFF);
        if (rsm_fsm_create(&f) != 0) {
            abort();
        }
    }
    rv = rsm_entry_decode(data, size, &cmds, &n, errmsg);
    if (rv != 0 && rv != ERR_MALFORMED && rv != ERR_VERSION) {
        abort();
    }
    rsm_cmds_free(cmds, n);
    rv = rsm_fsm_apply(f, index + 1, data, size, res, 16, &n);
    if (rv == 0) {
        index++;
    } else if (rv != ERR_VERSION) {
        abort();
    }
    rv = rsm_fsm_restore(f, data, size, errmsg);
    if (rv != 0 && rv != ERR_MALFORMED && rv != ERR_VERSION) {
        abort();
    }
    return 0;
}
