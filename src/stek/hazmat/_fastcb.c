/*
 * HAZMAT: stek's ticket-key callback in C, for the handshake hot path.
 *
 * Same contract, same decision table, same counters as the pure-Python
 * callbacks in stek/_ctypes_callbacks.py (which remain the fallback when this
 * module is not built).  It exists only because a Python callback costs several
 * microseconds per handshake (ctypes thunk, GIL, argument conversion).
 *
 * It links no OpenSSL: every OpenSSL function it calls is a pointer handed
 * in by stek.hazmat.libssl, resolved through the libssl that Python's own
 * _ssl module links, so the two can never be different OpenSSLs.
 *
 * Each installed SSL_CTX gets a slot; the callback of slot N is trampoline
 * N, because the callback has no user-data argument.  A slot's keys are
 * replaced under its mutex; the callback copies the one key it needs to the
 * stack under that mutex and wipes the copy before returning.  Key bytes
 * never leave this file except into OpenSSL's cipher and MAC contexts.
 *
 * Answers: SSL_CTX_set_tlsext_ticket_key_cb(3): 1 = ctx/hctx set, 2 = set
 * and renew, 0 = no ticket / full handshake, -1 = abort the handshake.  stek
 * never answers -1: when RAND_bytes or a cipher/MAC init fails it answers 0
 * (no ticket, or a full handshake), because a handshake without resumption
 * beats no handshake at all.
 *
 * Lifetime: a slot lives as long as the SSL_CTX it serves, not as long as
 * the Python SSLContext.  OpenSSL keeps an SSL_CTX alive while any SSL made
 * from it lives (its session_ctx, whose ticket callbacks every handshake
 * uses, even after an SNI callback switched the SSL to another SSL_CTX).  So
 * each slot holds one reference for the Python Installation and one for the
 * SSL_CTX, dropped by an SSL_CTX ex_data free callback
 * (CRYPTO_get_ex_new_index(3)) when OpenSSL frees it; the slot is wiped and
 * reused only when both are gone.
 */
/* The limited API of CPython 3.10 (PEP 384, PEP 652): one cp310-abi3 build
 * serves 3.10 and every later CPython (setup.py, scripts/build-wheel.sh). */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define NSLOTS 64
#define MAXKEYS 64
#define NAME_LEN 16          /* RFC 5077 section 4: key_name[16] */
#define IV_LEN 16            /* EVP_MAX_IV_LENGTH; AES-CBC IV */
#define TLS1_3_VERSION 0x0304
#define MAX_SID_CTX 32       /* SSL_MAX_SID_CTX_LENGTH (openssl/ssl.h) */
#define CRYPTO_EX_INDEX_SSL_CTX 1 /* openssl/crypto.h */

/* Counter indices: the order of stek.installation.Counters' fields. */
enum { C_ISSUED, C_RESUMED, C_RENEWED, C_REJ_UNKNOWN, C_REJ_EXPIRED, C_NO_ACTIVE, C_ERRORS,
       C_TOO_OLD, C_ACCEPTED, C_NO_PEER, C_OTHER_NAME, NCOUNTERS };
/* Lifecycle states: the order of stek.schedule.State. */
enum { S_PENDING, S_ACTIVE, S_DECRYPT_ONLY, S_EXPIRED, NSTATES };

typedef int (*rand_bytes_fn)(unsigned char *, int);
typedef int (*cipher_init_fn)(void *, const void *, void *, const unsigned char *,
                              const unsigned char *);
typedef int (*mac_set_params_fn)(void *, const void *);
typedef int (*hmac_init_fn)(void *, const void *, int, const void *, void *);
typedef int (*ssl_version_fn)(const void *);
typedef void *(*get_session_fn)(const void *);
typedef int (*get0_appdata_fn)(void *, void **, size_t *);
typedef int (*set1_appdata_fn)(void *, const void *, size_t);
typedef long (*session_get_time_fn)(const void *);
typedef void (*ex_free_fn)(void *, void *, void *, int, long, void *);
typedef int (*ex_new_index_fn)(int, long, void *, void *, void *, ex_free_fn);
typedef int (*ctx_set_ex_data_fn)(void *, int, void *);
typedef void *(*ctx_get_ex_data_fn)(const void *, int);
typedef int (*set_sid_ctx_fn)(void *, const unsigned char *, unsigned int);
typedef const unsigned char *(*sess_get0_id_ctx_fn)(const void *, unsigned int *);
typedef int (*get_verify_mode_fn)(const void *);
typedef void *(*sess_get0_peer_fn)(void *);
typedef int (*hello_get0_ext_fn)(void *, unsigned int, const unsigned char **, size_t *);
typedef const char *(*sess_get0_hostname_fn)(const void *);
typedef const char *(*get_servername_fn)(const void *, int);
typedef int (*sess_set1_hostname_fn)(void *, const char *);

/* SSL_TICKET_STATUS and SSL_TICKET_RETURN (openssl/ssl.h) used below. */
#define NSTATUS 7
#define TICKET_SUCCESS 5
#define TICKET_SUCCESS_RENEW 6
#define TICKET_RETURN_IGNORE_RENEW 2
#define TICKET_RETURN_USE 3
#define TICKET_RETURN_USE_RENEW 4
/* openssl/ssl.h: SSL_VERIFY_FAIL_IF_NO_PEER_CERT (Python's CERT_REQUIRED). */
#define VERIFY_FAIL_IF_NO_PEER_CERT 0x02
/* stek.session.BIRTH_MAGIC + 8-byte big-endian birth time (encode_birth). */
#define APPDATA_LEN 12
static const unsigned char APPDATA_MAGIC[4] = {'s', 't', 'k', '1'};

/* openssl/core.h struct ossl_param_st (stable ABI). */
typedef struct {
    const char *key;
    unsigned int data_type;
    void *data;
    size_t data_size;
    size_t return_size;
} ossl_param;
#define OSSL_PARAM_UTF8_STRING 4
#define OSSL_PARAM_OCTET_STRING 5

static struct {
    rand_bytes_fn rand_bytes;
    cipher_init_fn enc_init, dec_init;
    mac_set_params_fn mac_set_params; /* OpenSSL 3 (EVP_MAC variant) */
    hmac_init_fn hmac_init;           /* OpenSSL 1.1.1 (HMAC_CTX variant) */
    const void *sha256;
    ssl_version_fn ssl_version;
    get_session_fn get_session;
    get0_appdata_fn get0_appdata;
    set1_appdata_fn set1_appdata;
    session_get_time_fn session_get_time;
    ctx_set_ex_data_fn ctx_set_ex_data;
    ctx_get_ex_data_fn ctx_get_ex_data;
    set_sid_ctx_fn set_sid_ctx;
    sess_get0_id_ctx_fn sess_get0_id_ctx;
    get_verify_mode_fn get_verify_mode;
    sess_get0_peer_fn sess_get0_peer;
    hello_get0_ext_fn hello_get0_ext;
    sess_get0_hostname_fn sess_get0_hostname;
    get_servername_fn get_servername;
    sess_set1_hostname_fn sess_set1_hostname;
    int ex_index; /* the SSL_CTX ex_data index holding a chain of slots */
    int ready;
} F;

typedef struct {
    unsigned char name[NAME_LEN], aes[32], hmac[32];
    int part_len;
    const void *cipher;
    int64_t activates, retires, expires;
} ckey;

typedef struct slot_s {
    pthread_mutex_t lock;
    int used;
    int refs;                 /* Python Installation + SSL_CTX; under slots_lock */
    struct slot_s *next_on_ctx; /* the SSL_CTX's chain (ex_data), under slots_lock */
    /* The connection's session id context: SSL_set_session_id_context(3) from
     * the ClientHello callback when set_sid is 1; the context resumptions are
     * counted in either way.  Written before the callbacks are installed. */
    unsigned char sid[MAX_SID_CTX];
    unsigned int sid_len;
    int set_sid;
    int nkeys;
    ckey keys[MAXKEYS];
    signed char ans12[NSTATES], ans13[NSTATES];
    signed char dec_table[NSTATUS]; /* stek.schedule.DECRYPTED_TICKET */
    int64_t max_age;                /* policy.accept_for */
    uint64_t counters[NCOUNTERS];
} slot_t;

static slot_t slots[NSLOTS];
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

static void wipe(void *p, size_t n) {
    volatile unsigned char *v = (volatile unsigned char *)p;
    while (n--) *v++ = 0;
}

static inline void bump(slot_t *sl, int c) {
    __atomic_fetch_add(&sl->counters[c], 1, __ATOMIC_RELAXED);
}

static int mac_init(void *mctx, ckey *k) {
    if (F.mac_set_params != NULL) {
        /* EVP_MAC-HMAC(7): "digest" (UTF8 string), "key" (octet string). */
        ossl_param params[3];
        memset(params, 0, sizeof params);
        params[0].key = "digest";
        params[0].data_type = OSSL_PARAM_UTF8_STRING;
        params[0].data = (void *)"SHA256";
        params[0].data_size = 6;
        params[1].key = "key";
        params[1].data_type = OSSL_PARAM_OCTET_STRING;
        params[1].data = k->hmac;
        params[1].data_size = (size_t)k->part_len;
        return F.mac_set_params(mctx, params);
    }
    return F.hmac_init(mctx, k->hmac, k->part_len, F.sha256, NULL);
}

static int ticket_cb(slot_t *sl, void *s, unsigned char *name, unsigned char *iv, void *cctx,
                     void *mctx, int enc) {
    ckey k;
    int found = 0, i, ret;
    int64_t now = (int64_t)time(NULL);

    pthread_mutex_lock(&sl->lock);
    if (enc) {
        /* The newest active key encrypts (docs/design.md, "The decision table"). */
        int best = -1;
        for (i = 0; i < sl->nkeys; i++) {
            ckey *c = &sl->keys[i];
            if (c->activates <= now && now < c->retires &&
                (best < 0 || c->activates > sl->keys[best].activates))
                best = i;
        }
        if (best >= 0) {
            k = sl->keys[best];
            found = 1;
        }
    } else {
        /* name comes from the ticket: attacker-chosen, any 16 bytes. */
        for (i = 0; i < sl->nkeys; i++) {
            if (memcmp(sl->keys[i].name, name, NAME_LEN) == 0) {
                k = sl->keys[i];
                found = 1;
                break;
            }
        }
    }
    pthread_mutex_unlock(&sl->lock);

    if (enc) {
        if (!found) {
            bump(sl, C_NO_ACTIVE);
            return 0; /* no ticket; the handshake goes on */
        }
        /* RAND_bytes returns 1 on success (the man page example tests it backwards).
         * A failure answers 0: no ticket, the handshake goes on (-1 would abort it). */
        if (F.rand_bytes(iv, IV_LEN) != 1) {
            ret = 0;
        } else {
            memcpy(name, k.name, NAME_LEN);
            ret = (F.enc_init(cctx, k.cipher, NULL, k.aes, iv) == 1 && mac_init(mctx, &k) == 1)
                      ? 1 : 0;
        }
        bump(sl, ret == 1 ? C_ISSUED : C_ERRORS);
        wipe(&k, sizeof k);
        return ret;
    }
    if (!found) {
        bump(sl, C_REJ_UNKNOWN);
        return 0;
    }
    {
        int state = now < k.activates ? S_PENDING
                    : now < k.retires ? S_ACTIVE
                    : now < k.expires ? S_DECRYPT_ONLY
                    : S_EXPIRED;
        int answer;
        if (state == S_EXPIRED) {
            bump(sl, C_REJ_EXPIRED);
            wipe(&k, sizeof k);
            return 0;
        }
        answer = sl->ans12[state];
        if (sl->ans13[state] != answer && F.ssl_version(s) == TLS1_3_VERSION)
            answer = sl->ans13[state];
        /* A failed init answers 0 (a full handshake), never -1 (an abort).
         * Resumptions are counted later, in dec_cb, once OpenSSL checked the MAC. */
        if (mac_init(mctx, &k) != 1 || F.dec_init(cctx, k.cipher, NULL, k.aes, iv) != 1) {
            bump(sl, C_ERRORS);
            answer = 0;
        } else {
            bump(sl, C_ACCEPTED);
        }
        wipe(&k, sizeof k);
        return answer;
    }
}

static int tramp_0(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[0], s, n, iv, c, m, e); }
static int tramp_1(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[1], s, n, iv, c, m, e); }
static int tramp_2(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[2], s, n, iv, c, m, e); }
static int tramp_3(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[3], s, n, iv, c, m, e); }
static int tramp_4(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[4], s, n, iv, c, m, e); }
static int tramp_5(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[5], s, n, iv, c, m, e); }
static int tramp_6(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[6], s, n, iv, c, m, e); }
static int tramp_7(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[7], s, n, iv, c, m, e); }
static int tramp_8(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[8], s, n, iv, c, m, e); }
static int tramp_9(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[9], s, n, iv, c, m, e); }
static int tramp_10(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[10], s, n, iv, c, m, e); }
static int tramp_11(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[11], s, n, iv, c, m, e); }
static int tramp_12(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[12], s, n, iv, c, m, e); }
static int tramp_13(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[13], s, n, iv, c, m, e); }
static int tramp_14(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[14], s, n, iv, c, m, e); }
static int tramp_15(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[15], s, n, iv, c, m, e); }
static int tramp_16(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[16], s, n, iv, c, m, e); }
static int tramp_17(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[17], s, n, iv, c, m, e); }
static int tramp_18(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[18], s, n, iv, c, m, e); }
static int tramp_19(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[19], s, n, iv, c, m, e); }
static int tramp_20(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[20], s, n, iv, c, m, e); }
static int tramp_21(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[21], s, n, iv, c, m, e); }
static int tramp_22(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[22], s, n, iv, c, m, e); }
static int tramp_23(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[23], s, n, iv, c, m, e); }
static int tramp_24(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[24], s, n, iv, c, m, e); }
static int tramp_25(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[25], s, n, iv, c, m, e); }
static int tramp_26(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[26], s, n, iv, c, m, e); }
static int tramp_27(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[27], s, n, iv, c, m, e); }
static int tramp_28(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[28], s, n, iv, c, m, e); }
static int tramp_29(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[29], s, n, iv, c, m, e); }
static int tramp_30(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[30], s, n, iv, c, m, e); }
static int tramp_31(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[31], s, n, iv, c, m, e); }
static int tramp_32(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[32], s, n, iv, c, m, e); }
static int tramp_33(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[33], s, n, iv, c, m, e); }
static int tramp_34(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[34], s, n, iv, c, m, e); }
static int tramp_35(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[35], s, n, iv, c, m, e); }
static int tramp_36(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[36], s, n, iv, c, m, e); }
static int tramp_37(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[37], s, n, iv, c, m, e); }
static int tramp_38(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[38], s, n, iv, c, m, e); }
static int tramp_39(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[39], s, n, iv, c, m, e); }
static int tramp_40(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[40], s, n, iv, c, m, e); }
static int tramp_41(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[41], s, n, iv, c, m, e); }
static int tramp_42(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[42], s, n, iv, c, m, e); }
static int tramp_43(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[43], s, n, iv, c, m, e); }
static int tramp_44(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[44], s, n, iv, c, m, e); }
static int tramp_45(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[45], s, n, iv, c, m, e); }
static int tramp_46(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[46], s, n, iv, c, m, e); }
static int tramp_47(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[47], s, n, iv, c, m, e); }
static int tramp_48(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[48], s, n, iv, c, m, e); }
static int tramp_49(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[49], s, n, iv, c, m, e); }
static int tramp_50(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[50], s, n, iv, c, m, e); }
static int tramp_51(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[51], s, n, iv, c, m, e); }
static int tramp_52(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[52], s, n, iv, c, m, e); }
static int tramp_53(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[53], s, n, iv, c, m, e); }
static int tramp_54(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[54], s, n, iv, c, m, e); }
static int tramp_55(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[55], s, n, iv, c, m, e); }
static int tramp_56(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[56], s, n, iv, c, m, e); }
static int tramp_57(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[57], s, n, iv, c, m, e); }
static int tramp_58(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[58], s, n, iv, c, m, e); }
static int tramp_59(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[59], s, n, iv, c, m, e); }
static int tramp_60(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[60], s, n, iv, c, m, e); }
static int tramp_61(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[61], s, n, iv, c, m, e); }
static int tramp_62(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[62], s, n, iv, c, m, e); }
static int tramp_63(void *s, unsigned char *n, unsigned char *iv, void *c, void *m, int e) { return ticket_cb(&slots[63], s, n, iv, c, m, e); }

static void *const trampolines[NSLOTS] = {
    (void *)tramp_0, (void *)tramp_1, (void *)tramp_2, (void *)tramp_3, (void *)tramp_4, (void *)tramp_5, (void *)tramp_6, (void *)tramp_7,
    (void *)tramp_8, (void *)tramp_9, (void *)tramp_10, (void *)tramp_11, (void *)tramp_12, (void *)tramp_13, (void *)tramp_14, (void *)tramp_15,
    (void *)tramp_16, (void *)tramp_17, (void *)tramp_18, (void *)tramp_19, (void *)tramp_20, (void *)tramp_21, (void *)tramp_22, (void *)tramp_23,
    (void *)tramp_24, (void *)tramp_25, (void *)tramp_26, (void *)tramp_27, (void *)tramp_28, (void *)tramp_29, (void *)tramp_30, (void *)tramp_31,
    (void *)tramp_32, (void *)tramp_33, (void *)tramp_34, (void *)tramp_35, (void *)tramp_36, (void *)tramp_37, (void *)tramp_38, (void *)tramp_39,
    (void *)tramp_40, (void *)tramp_41, (void *)tramp_42, (void *)tramp_43, (void *)tramp_44, (void *)tramp_45, (void *)tramp_46, (void *)tramp_47,
    (void *)tramp_48, (void *)tramp_49, (void *)tramp_50, (void *)tramp_51, (void *)tramp_52, (void *)tramp_53, (void *)tramp_54, (void *)tramp_55,
    (void *)tramp_56, (void *)tramp_57, (void *)tramp_58, (void *)tramp_59, (void *)tramp_60, (void *)tramp_61, (void *)tramp_62, (void *)tramp_63
};

/* ---- SSL_CTX_set_session_ticket_cb(3): a session's birth rides in its ticket --- */

/* The birth is 8 big-endian bytes: decoded unsigned, as stek.session.decode_birth
 * does, so both callbacks read the same number from the same ticket. */
static int appdata_born(void *sess, uint64_t *born) {
    void *data = NULL;
    size_t len = 0;
    const unsigned char *d;
    int i;
    if (F.get0_appdata(sess, &data, &len) != 1 || data == NULL || len != APPDATA_LEN) return 0;
    d = (const unsigned char *)data;
    if (memcmp(d, APPDATA_MAGIC, 4) != 0) return 0;
    *born = 0;
    for (i = 4; i < APPDATA_LEN; i++) *born = (*born << 8) | (uint64_t)d[i];
    return 1;
}

static uint64_t session_time(void *sess) {
    long t = F.session_get_time(sess);
    return t > 0 ? (uint64_t)t : 0;
}

/* The full handshake's time: from stek's appdata, else the session's own
 * time (stamped into the appdata so renewed tickets carry it on).  *sealed
 * (when not NULL) tells whether the appdata was there already: the session
 * was sealed by stek. */
static uint64_t stamp_born(void *sess, int *sealed) {
    uint64_t born;
    unsigned char blob[APPDATA_LEN];
    int i, had = appdata_born(sess, &born);
    if (sealed != NULL) *sealed = had;
    if (had) return born;
    born = session_time(sess);
    memcpy(blob, APPDATA_MAGIC, 4);
    for (i = 0; i < 8; i++) blob[4 + i] = (unsigned char)(born >> (56 - 8 * i));
    F.set1_appdata(sess, blob, APPDATA_LEN);
    return born;
}

/* stek.schedule.decrypted_ticket_answer: `now >= born + max_age`, computed
 * without overflow for any unsigned 64-bit birth (max_age >= 0). */
static int too_old(uint64_t born, int64_t now, int64_t max_age) {
    if (now < 0) return 0;
    return born <= (uint64_t)now && (uint64_t)now - born >= (uint64_t)max_age;
}

static int decide(const signed char *table, int status, int have_session, uint64_t born,
                  int64_t now, int64_t max_age, int *refused_old) {
    int answer = (status >= 0 && status < NSTATUS) ? table[status] : TICKET_RETURN_IGNORE_RENEW;
    *refused_old = 0;
    if ((status == TICKET_SUCCESS || status == TICKET_SUCCESS_RENEW) && have_session &&
        (answer == TICKET_RETURN_USE || answer == TICKET_RETURN_USE_RENEW) &&
        too_old(born, now, max_age)) {
        *refused_old = 1;
        answer = TICKET_RETURN_IGNORE_RENEW;
    }
    return answer;
}

/* OpenSSL records the server name in a session only when a servername
 * callback acknowledged it (final_server_name); stek records the name the
 * client asked for in every session it seals, so the decrypt path can hold a
 * ticket to it (same_server_name).  SSL_get_servername(3). */
static void record_server_name(void *s, void *sess) {
    const char *name;
    if (F.sess_get0_hostname(sess) != NULL) return;
    name = F.get_servername(s, 0 /* TLSEXT_NAMETYPE_host_name */);
    if (name != NULL) F.sess_set1_hostname(sess, name);
}

/* gen_cb: answering 0 would abort the handshake, so it always answers 1. */
static int gen_cb(void *s, void *arg) {
    void *sess = F.get_session(s);
    if (sess != NULL) {
        stamp_born(sess, NULL);
        record_server_name(s, sess);
    }
    return 1;
}

/* OpenSSL refuses a session made in another session id context
 * (ssl_get_prev_session, tls_parse_ctos_psk) after this callback ran. */
static int same_sid_ctx(const slot_t *sl, const void *ss) {
    unsigned int len = 0;
    const unsigned char *sid = F.sess_get0_id_ctx(ss, &len);
    return len == sl->sid_len && (len == 0 || memcmp(sid, sl->sid, len) == 0);
}

/* The host name the ClientHello asks for (RFC 6066 section 3: ServerNameList =
 * u16 length, then NameType host_name(0), u16 length, HostName), read with
 * SSL_client_hello_get0_ext(3): the ClientHello is still held while tickets are
 * decrypted.  Returns 0 for a malformed extension; *name is NULL without one. */
static int hello_server_name(void *s, const unsigned char **name, size_t *len) {
    const unsigned char *p = NULL;
    size_t n = 0, list, host;
    *name = NULL;
    *len = 0;
    if (F.hello_get0_ext(s, 0 /* TLSEXT_TYPE_server_name */, &p, &n) != 1 || p == NULL)
        return 1;
    if (n < 5) return 0;
    list = ((size_t)p[0] << 8) | p[1];
    host = ((size_t)p[3] << 8) | p[4];
    if (list != n - 2 || p[2] != 0 || host == 0 || host > n - 5) return 0;
    *name = p + 5;
    *len = host;
    return 1;
}

/* Was the session made for the server name this connection asks for?  RFC 6066
 * section 3: a server "MUST NOT accept the request to resume the session if the
 * server_name extension contains a different name"; stek holds TLS 1.3 to the
 * same rule, because an SNI callback may switch the connection to another
 * context after its PSK was accepted (docs/trust.md).  DNS names compare
 * without regard to ASCII case (RFC 4343).  A session without a name that
 * stek sealed (`ours`: it carries stek's appdata) was made without SNI, since
 * stek records every name asked (record_server_name); one sealed elsewhere
 * may come from a server that records none (no servername callback), and is
 * left to the session id context. */
static int same_server_name(void *s, void *ss, int ours) {
    const char *had = F.sess_get0_hostname(ss);
    const unsigned char *want;
    size_t len, i;
    if (!hello_server_name(s, &want, &len)) return 0;
    if (had == NULL) return want == NULL || !ours;
    if (want == NULL) return 0;
    if (strlen(had) != len) return 0;
    for (i = 0; i < len; i++) {
        unsigned char a = (unsigned char)had[i], b = want[i];
        if (a >= 'A' && a <= 'Z') a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (unsigned char)(b + 32);
        if (a != b) return 0;
    }
    return 1;
}

/* dec_cb: OpenSSL's verdict on a presented ticket (its MAC checked, its state
 * decrypted): stek.schedule.decrypted_ticket_answer, in C.  This is where a
 * resumption is counted, not in the key callback, which runs before the MAC. */
static int dec_cb(void *s, void *ss, const unsigned char *kn, size_t knl, int status,
                  void *arg) {
    slot_t *sl = (slot_t *)arg;
    int ok = (status == TICKET_SUCCESS || status == TICKET_SUCCESS_RENEW) && ss != NULL;
    int refused_old, answer;
    int ours = 0; /* sealed by stek: its appdata was there before stamp_born */
    uint64_t born = ok ? stamp_born(ss, &ours) : 0;
    answer = decide(sl->dec_table, status, ok, born, (int64_t)time(NULL),
                    __atomic_load_n(&sl->max_age, __ATOMIC_RELAXED), &refused_old);
    if (refused_old) bump(sl, C_TOO_OLD);
    if (ok && (answer == TICKET_RETURN_USE || answer == TICKET_RETURN_USE_RENEW)) {
        int same = same_sid_ctx(sl, ss);
        /* The last check (docs/trust.md): a session made without a client
         * certificate never resumes on a connection that requires one
         * (SSL_VERIFY_FAIL_IF_NO_PEER_CERT, SSL_get_verify_mode(3)): resuming
         * skips the CertificateRequest, so the peer would never be asked.  The
         * full handshake that follows asks for it.  Counted only where OpenSSL
         * would otherwise have resumed (same session id context). */
        if ((F.get_verify_mode(s) & VERIFY_FAIL_IF_NO_PEER_CERT) && F.sess_get0_peer(ss) == NULL) {
            if (same) bump(sl, C_NO_PEER);
            answer = TICKET_RETURN_IGNORE_RENEW;
        } else if (!same_server_name(s, ss, ours)) {
            if (same) bump(sl, C_OTHER_NAME);
            answer = TICKET_RETURN_IGNORE_RENEW;
        } else if (same) {
            bump(sl, C_RESUMED);
            if (answer == TICKET_RETURN_USE_RENEW) bump(sl, C_RENEWED);
        }
    }
    return answer;
}

/* SSL_CTX_set_client_hello_cb(3): the earliest per-connection hook, before
 * OpenSSL looks at any session.  CPython 3.13 sets "Python\0" on each server
 * SSL (SSL_set_session_id_context, gh-105293) instead of on the SSL_CTX, so a
 * context chosen for the ring must be set here, per connection. */
static int client_hello_cb(void *s, int *al, void *arg) {
    slot_t *sl = (slot_t *)arg;
    if (sl->set_sid) F.set_sid_ctx(s, sl->sid, sl->sid_len);
    return 1; /* SSL_CLIENT_HELLO_SUCCESS */
}

/* ---- slot lifetime -------------------------------------------------------- */

/* Under slots_lock. */
static void unref_locked(slot_t *sl) {
    if (--sl->refs > 0) return;
    pthread_mutex_lock(&sl->lock);
    wipe(sl->keys, sizeof sl->keys);
    sl->nkeys = 0;
    pthread_mutex_unlock(&sl->lock);
    sl->next_on_ctx = NULL;
    sl->used = 0;
}

/* CRYPTO_EX_free: OpenSSL is freeing an SSL_CTX; ptr is the head of the chain
 * of slots attached to it (NULL for every SSL_CTX stek never touched). */
static void ctx_free_cb(void *parent, void *ptr, void *ad, int idx, long argl, void *argp) {
    slot_t *sl = (slot_t *)ptr, *next;
    if (sl == NULL) return;
    pthread_mutex_lock(&slots_lock);
    for (; sl != NULL; sl = next) {
        next = sl->next_on_ctx;
        sl->next_on_ctx = NULL;
        unref_locked(sl);
    }
    pthread_mutex_unlock(&slots_lock);
}

/* ---- Python interface ---------------------------------------------------- */

static int slot_arg(PyObject *arg, int *out) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return -1;
    if (n < 0 || n >= NSLOTS || !slots[n].used) {
        PyErr_SetString(PyExc_ValueError, "invalid slot");
        return -1;
    }
    *out = (int)n;
    return 0;
}

/* A bytes argument's buffer and length.  Never a "y#" format: with the
 * limited API, what "#" means depends on the headers a build used (CPython
 * 3.13's drop PY_SSIZE_T_CLEAN), and an abi3 build runs on other versions. */
static int bytes_arg(PyObject *obj, const char **buf, Py_ssize_t *len) {
    char *b;
    if (PyBytes_AsStringAndSize(obj, &b, len) < 0) return -1;
    *buf = b;
    return 0;
}

static PyObject *fc_init(PyObject *self, PyObject *args) {
    unsigned long long rb, ei, di, msp, hi, sha, sv, gs, ga, sa, st, eni, sed, ged, ssc, sgi,
        gvm, sgp, hge, sgh, gsn, ssh;
    int index;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKKKKKKKKKKKKKK", &rb, &ei, &di, &msp, &hi, &sha, &sv,
                          &gs, &ga, &sa, &st, &eni, &sed, &ged, &ssc, &sgi, &gvm, &sgp, &hge,
                          &sgh, &gsn, &ssh))
        return NULL;
    if (!rb || !ei || !di || !sv || (!msp && !hi) || !gs || !ga || !sa || !st || !eni || !sed ||
        !ged || !ssc || !sgi || !gvm || !sgp || !hge || !sgh || !gsn || !ssh) {
        PyErr_SetString(PyExc_ValueError, "missing OpenSSL function");
        return NULL;
    }
    if (F.ready) Py_RETURN_NONE; /* the ex_data index is allocated once per process */
    F.rand_bytes = (rand_bytes_fn)(uintptr_t)rb;
    F.enc_init = (cipher_init_fn)(uintptr_t)ei;
    F.dec_init = (cipher_init_fn)(uintptr_t)di;
    F.mac_set_params = (mac_set_params_fn)(uintptr_t)msp;
    F.hmac_init = (hmac_init_fn)(uintptr_t)hi;
    F.sha256 = (const void *)(uintptr_t)sha;
    F.ssl_version = (ssl_version_fn)(uintptr_t)sv;
    F.get_session = (get_session_fn)(uintptr_t)gs;
    F.get0_appdata = (get0_appdata_fn)(uintptr_t)ga;
    F.set1_appdata = (set1_appdata_fn)(uintptr_t)sa;
    F.session_get_time = (session_get_time_fn)(uintptr_t)st;
    F.ctx_set_ex_data = (ctx_set_ex_data_fn)(uintptr_t)sed;
    F.ctx_get_ex_data = (ctx_get_ex_data_fn)(uintptr_t)ged;
    F.set_sid_ctx = (set_sid_ctx_fn)(uintptr_t)ssc;
    F.sess_get0_id_ctx = (sess_get0_id_ctx_fn)(uintptr_t)sgi;
    F.get_verify_mode = (get_verify_mode_fn)(uintptr_t)gvm;
    F.sess_get0_peer = (sess_get0_peer_fn)(uintptr_t)sgp;
    F.hello_get0_ext = (hello_get0_ext_fn)(uintptr_t)hge;
    F.sess_get0_hostname = (sess_get0_hostname_fn)(uintptr_t)sgh;
    F.get_servername = (get_servername_fn)(uintptr_t)gsn;
    F.sess_set1_hostname = (sess_set1_hostname_fn)(uintptr_t)ssh;
    /* SSL_CTX_get_ex_new_index(3) is this macro: */
    index = ((ex_new_index_fn)(uintptr_t)eni)(CRYPTO_EX_INDEX_SSL_CTX, 0, NULL, NULL, NULL,
                                              ctx_free_cb);
    if (index < 0) {
        PyErr_SetString(PyExc_RuntimeError, "CRYPTO_get_ex_new_index failed");
        return NULL;
    }
    F.ex_index = index;
    F.ready = 1;
    Py_RETURN_NONE;
}

/* A slot's tables, session id context and counters, fresh; under slots_lock
 * (and the slot's own lock when the SSL_CTX may be calling it). */
static void fill_slot(slot_t *sl, const char *a12, const char *a13, const char *dt,
                      const char *sid, Py_ssize_t nsid, int set_sid) {
    memset(sl->counters, 0, sizeof sl->counters);
    memcpy(sl->ans12, a12, NSTATES);
    memcpy(sl->ans13, a13, NSTATES);
    memcpy(sl->dec_table, dt, NSTATUS);
    memset(sl->sid, 0, sizeof sl->sid);
    memcpy(sl->sid, sid, (size_t)nsid);
    sl->sid_len = (unsigned int)nsid;
    sl->set_sid = set_sid;
    sl->max_age = 0;
}

/* acquire(ans12, ans13, dec_table, sid_ctx, set_sid, ssl_ctx=0) -> slot or None */
static PyObject *fc_acquire(PyObject *self, PyObject *args) {
    const char *a12, *a13, *dt, *sid;
    Py_ssize_t n12, n13, ndt, nsid;
    unsigned long long ctx = 0;
    int i, set_sid;
    PyObject *o12, *o13, *odt, *osid;
    if (!PyArg_ParseTuple(args, "OOOOp|K", &o12, &o13, &odt, &osid, &set_sid, &ctx) ||
        bytes_arg(o12, &a12, &n12) < 0 || bytes_arg(o13, &a13, &n13) < 0 ||
        bytes_arg(odt, &dt, &ndt) < 0 || bytes_arg(osid, &sid, &nsid) < 0)
        return NULL;
    if (!F.ready || n12 != NSTATES || n13 != NSTATES || ndt != NSTATUS || nsid > MAX_SID_CTX) {
        PyErr_SetString(PyExc_ValueError, "not initialized or bad lifecycle table");
        return NULL;
    }
    pthread_mutex_lock(&slots_lock);
    /* A slot the SSL_CTX still holds from an earlier installation that let it
     * go (refs == 1: only the SSL_CTX's reference) serves this one: its
     * trampoline and its place on the SSL_CTX's chain stay, so re-installing
     * on one context never uses up slots. */
    if (ctx) {
        slot_t *held = (slot_t *)F.ctx_get_ex_data((void *)(uintptr_t)ctx, F.ex_index);
        for (; held != NULL; held = held->next_on_ctx) {
            if (held->used && held->refs == 1) {
                pthread_mutex_lock(&held->lock);
                wipe(held->keys, sizeof held->keys);
                held->nkeys = 0;
                fill_slot(held, a12, a13, dt, sid, nsid, set_sid);
                pthread_mutex_unlock(&held->lock);
                held->refs = 2; /* the SSL_CTX's, and the new Installation's */
                pthread_mutex_unlock(&slots_lock);
                return PyLong_FromLong((long)(held - slots));
            }
        }
    }
    for (i = 0; i < NSLOTS; i++) {
        if (!slots[i].used) {
            slot_t *sl = &slots[i];
            pthread_mutex_init(&sl->lock, NULL);
            sl->used = 1;
            sl->refs = 1; /* the Python Installation's */
            sl->next_on_ctx = NULL;
            sl->nkeys = 0;
            fill_slot(sl, a12, a13, dt, sid, nsid, set_sid);
            pthread_mutex_unlock(&slots_lock);
            return PyLong_FromLong(i);
        }
    }
    pthread_mutex_unlock(&slots_lock);
    Py_RETURN_NONE; /* all slots taken: the caller falls back to Python */
}

/* release(slot): the Python Installation lets go; the slot is wiped and freed
 * once the SSL_CTX it serves is freed too. */
static PyObject *fc_release(PyObject *self, PyObject *arg) {
    int n;
    if (slot_arg(arg, &n) < 0) return NULL;
    pthread_mutex_lock(&slots_lock);
    unref_locked(&slots[n]);
    pthread_mutex_unlock(&slots_lock);
    Py_RETURN_NONE;
}

/* attach(slot, ssl_ctx): the SSL_CTX holds the slot until OpenSSL frees it. */
static PyObject *fc_attach(PyObject *self, PyObject *args) {
    PyObject *slotobj;
    unsigned long long ctx;
    int n, ok;
    if (!PyArg_ParseTuple(args, "OK", &slotobj, &ctx)) return NULL;
    if (slot_arg(slotobj, &n) < 0) return NULL;
    if (!ctx) {
        PyErr_SetString(PyExc_ValueError, "NULL SSL_CTX");
        return NULL;
    }
    pthread_mutex_lock(&slots_lock);
    {
        /* A slot acquire() took back from this SSL_CTX is on its chain already. */
        slot_t *on = (slot_t *)F.ctx_get_ex_data((void *)(uintptr_t)ctx, F.ex_index);
        for (; on != NULL; on = on->next_on_ctx) {
            if (on == &slots[n]) {
                pthread_mutex_unlock(&slots_lock);
                Py_RETURN_NONE;
            }
        }
    }
    slots[n].next_on_ctx = (slot_t *)F.ctx_get_ex_data((void *)(uintptr_t)ctx, F.ex_index);
    ok = F.ctx_set_ex_data((void *)(uintptr_t)ctx, F.ex_index, &slots[n]);
    if (ok == 1) slots[n].refs++;
    else slots[n].next_on_ctx = NULL;
    pthread_mutex_unlock(&slots_lock);
    if (ok != 1) {
        PyErr_SetString(PyExc_RuntimeError, "SSL_CTX_set_ex_data failed");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *fc_in_use(PyObject *self, PyObject *unused) {
    int i, n = 0;
    pthread_mutex_lock(&slots_lock);
    for (i = 0; i < NSLOTS; i++) n += slots[i].used;
    pthread_mutex_unlock(&slots_lock);
    return PyLong_FromLong(n);
}

/* decide(dec_table, status, appdata or None, session_time, now, max_age)
 *   -> (answer, refused_as_too_old): dec_cb's decision, for tests that hold
 * it against stek.schedule.decrypted_ticket_answer. */
static PyObject *fc_decide(PyObject *self, PyObject *args) {
    const char *dt;
    Py_ssize_t ndt;
    int status, refused, answer, i;
    PyObject *appdata;
    long long stime, now, max_age;
    uint64_t born;
    PyObject *odt;
    if (!PyArg_ParseTuple(args, "OiOLLL", &odt, &status, &appdata, &stime, &now, &max_age) ||
        bytes_arg(odt, &dt, &ndt) < 0)
        return NULL;
    if (ndt != NSTATUS || max_age < 0) {
        PyErr_SetString(PyExc_ValueError, "bad table or max_age");
        return NULL;
    }
    born = stime > 0 ? (uint64_t)stime : 0;
    if (appdata != Py_None) {
        char *d;
        Py_ssize_t n;
        if (PyBytes_AsStringAndSize(appdata, &d, &n) < 0) return NULL;
        if (n == APPDATA_LEN && memcmp(d, APPDATA_MAGIC, 4) == 0) {
            born = 0;
            for (i = 4; i < APPDATA_LEN; i++) born = (born << 8) | (unsigned char)d[i];
        }
    }
    answer = decide((const signed char *)dt, status, 1, born, (int64_t)now, (int64_t)max_age,
                    &refused);
    return Py_BuildValue("(iO)", answer, refused ? Py_True : Py_False);
}

/* UNSAFE_TESTING_ONLY_swap_crypto(RAND_bytes, EncryptInit, DecryptInit, MAC init):
 * replace the OpenSSL functions the callbacks call (0 keeps one), returning the
 * previous addresses.  Exists only so tests can make them fail in a real
 * handshake; never call it anywhere else. */
static PyObject *fc_testing_swap(PyObject *self, PyObject *args) {
    unsigned long long rb, ei, di, mac;
    PyObject *old;
    if (!PyArg_ParseTuple(args, "KKKK", &rb, &ei, &di, &mac)) return NULL;
    old = Py_BuildValue("(KKKK)", (unsigned long long)(uintptr_t)F.rand_bytes,
                        (unsigned long long)(uintptr_t)F.enc_init,
                        (unsigned long long)(uintptr_t)F.dec_init,
                        (unsigned long long)(uintptr_t)(F.mac_set_params != NULL
                                                            ? (void *)F.mac_set_params
                                                            : (void *)F.hmac_init));
    if (rb) F.rand_bytes = (rand_bytes_fn)(uintptr_t)rb;
    if (ei) F.enc_init = (cipher_init_fn)(uintptr_t)ei;
    if (di) F.dec_init = (cipher_init_fn)(uintptr_t)di;
    if (mac) {
        if (F.mac_set_params != NULL) F.mac_set_params = (mac_set_params_fn)(uintptr_t)mac;
        else F.hmac_init = (hmac_init_fn)(uintptr_t)mac;
    }
    return old;
}

/* load(slot, [(name, aes, hmac, activates, retires, expires, cipher_ptr), ...]) */
static PyObject *fc_load(PyObject *self, PyObject *args) {
    PyObject *slotobj, *seq, *fast;
    ckey tmp[MAXKEYS];
    Py_ssize_t n, i;
    int s;
    if (!PyArg_ParseTuple(args, "OO", &slotobj, &seq)) return NULL;
    if (slot_arg(slotobj, &s) < 0) return NULL;
    /* A tuple copy of the sequence: its items stay alive while parsed (the
     * limited API has no PySequence_Fast_GET_ITEM). */
    fast = PySequence_Tuple(seq);
    if (fast == NULL) return NULL;
    n = PyTuple_Size(fast);
    if (n > MAXKEYS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many keys");
        return NULL;
    }
    for (i = 0; i < n; i++) {
        const char *nm, *aes, *hm;
        Py_ssize_t lnm, laes, lhm;
        long long a, r, e;
        unsigned long long cipher;
        PyObject *item = PyTuple_GetItem(fast, i); /* borrowed, held by fast */
        PyObject *onm, *oaes, *ohm;
        if (item == NULL ||
            !PyArg_ParseTuple(item, "OOOLLLK", &onm, &oaes, &ohm, &a, &r, &e, &cipher) ||
            bytes_arg(onm, &nm, &lnm) < 0 || bytes_arg(oaes, &aes, &laes) < 0 ||
            bytes_arg(ohm, &hm, &lhm) < 0) {
            wipe(tmp, sizeof tmp);
            Py_DECREF(fast);
            return NULL;
        }
        if (lnm != NAME_LEN || (laes != 32 && laes != 16) || lhm != laes || !cipher) {
            wipe(tmp, sizeof tmp);
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "malformed key");
            return NULL;
        }
        memset(&tmp[i], 0, sizeof tmp[i]);
        memcpy(tmp[i].name, nm, NAME_LEN);
        memcpy(tmp[i].aes, aes, (size_t)laes);
        memcpy(tmp[i].hmac, hm, (size_t)lhm);
        tmp[i].part_len = (int)laes;
        tmp[i].cipher = (const void *)(uintptr_t)cipher;
        tmp[i].activates = a;
        tmp[i].retires = r;
        tmp[i].expires = e;
    }
    Py_DECREF(fast);
    pthread_mutex_lock(&slots[s].lock);
    wipe(slots[s].keys, sizeof slots[s].keys);
    memcpy(slots[s].keys, tmp, sizeof(ckey) * (size_t)n);
    slots[s].nkeys = (int)n;
    pthread_mutex_unlock(&slots[s].lock);
    wipe(tmp, sizeof tmp);
    Py_RETURN_NONE;
}

static PyObject *fc_counters(PyObject *self, PyObject *arg) {
    int s, i;
    PyObject *t;
    if (slot_arg(arg, &s) < 0) return NULL;
    t = PyTuple_New(NCOUNTERS);
    if (t == NULL) return NULL;
    for (i = 0; i < NCOUNTERS; i++) {
        uint64_t v = __atomic_load_n(&slots[s].counters[i], __ATOMIC_RELAXED);
        PyObject *c = PyLong_FromUnsignedLongLong(v);
        /* PyTuple_SetItem steals c (and drops it on failure). */
        if (c == NULL || PyTuple_SetItem(t, i, c) < 0) {
            Py_DECREF(t);
            return NULL;
        }
    }
    return t;
}

static PyObject *fc_address(PyObject *self, PyObject *arg) {
    int s;
    if (slot_arg(arg, &s) < 0) return NULL;
    return PyLong_FromVoidPtr(trampolines[s]);
}

/* after_fork(): in a forked child, only the forking thread exists; a mutex
 * another thread held at fork time would stay locked forever.  Re-create
 * them all (the child is single-threaded at this point). */
static PyObject *fc_after_fork(PyObject *self, PyObject *unused) {
    int i;
    pthread_mutex_init(&slots_lock, NULL);
    for (i = 0; i < NSLOTS; i++)
        if (slots[i].used) pthread_mutex_init(&slots[i].lock, NULL);
    Py_RETURN_NONE;
}

static PyObject *fc_set_max_age(PyObject *self, PyObject *args) {
    PyObject *slotobj;
    long long age;
    int s;
    if (!PyArg_ParseTuple(args, "OL", &slotobj, &age)) return NULL;
    if (slot_arg(slotobj, &s) < 0) return NULL;
    if (age < 0) age = 0;
    __atomic_store_n(&slots[s].max_age, (int64_t)age, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *fc_slot_pointer(PyObject *self, PyObject *arg) {
    int s;
    if (slot_arg(arg, &s) < 0) return NULL;
    return PyLong_FromVoidPtr(&slots[s]);
}

static PyObject *fc_gen_address(PyObject *self, PyObject *unused) {
    return PyLong_FromVoidPtr((void *)gen_cb);
}

static PyObject *fc_dec_address(PyObject *self, PyObject *unused) {
    return PyLong_FromVoidPtr((void *)dec_cb);
}

static PyObject *fc_client_hello_address(PyObject *self, PyObject *unused) {
    return PyLong_FromVoidPtr((void *)client_hello_cb);
}

static PyMethodDef methods[] = {
    {"set_max_age", fc_set_max_age, METH_VARARGS, "set_max_age(slot, seconds)"},
    {"slot_pointer", fc_slot_pointer, METH_O, "slot_pointer(slot): the dec_cb argument"},
    {"gen_address", fc_gen_address, METH_NOARGS, "the session ticket gen_cb address"},
    {"dec_address", fc_dec_address, METH_NOARGS, "the session ticket dec_cb address"},
    {"after_fork", fc_after_fork, METH_NOARGS, "after_fork(): reset locks in a forked child"},
    {"client_hello_address", fc_client_hello_address, METH_NOARGS,
     "the ClientHello callback address (sets the session id context)"},
    {"init", fc_init, METH_VARARGS, "init(RAND_bytes, EncInit, DecInit, MAC_set_params, "
                                    "HMAC_Init_ex, EVP_sha256(), SSL_version, SSL_get_session, "
                                    "get0_ticket_appdata, set1_ticket_appdata, "
                                    "SSL_SESSION_get_time, CRYPTO_get_ex_new_index, "
                                    "SSL_CTX_set_ex_data, SSL_CTX_get_ex_data, "
                                    "SSL_set_session_id_context, SSL_SESSION_get0_id_context, "
                                    "SSL_get_verify_mode, SSL_SESSION_get0_peer, SSL_client_hello_get0_ext, "
                                    "SSL_SESSION_get0_hostname, SSL_get_servername, "
                                    "SSL_SESSION_set1_hostname): addresses"},
    {"acquire", fc_acquire, METH_VARARGS,
     "acquire(ans12, ans13, dec_table, sid_ctx, set_sid, ssl_ctx=0) -> slot or None "
     "(a slot ssl_ctx holds and no installation uses is taken back)"},
    {"release", fc_release, METH_O, "release(slot): the Installation's reference"},
    {"attach", fc_attach, METH_VARARGS, "attach(slot, ssl_ctx): held until OpenSSL frees it"},
    {"in_use", fc_in_use, METH_NOARGS, "in_use() -> number of slots in use"},
    {"decide", fc_decide, METH_VARARGS, "decide(table, status, appdata, stime, now, max_age)"},
    {"UNSAFE_TESTING_ONLY_swap_crypto", fc_testing_swap, METH_VARARGS,
     "TESTS ONLY: swap the RAND/cipher/MAC functions; returns the previous ones"},
    {"load", fc_load, METH_VARARGS, "load(slot, keys): replace the slot's keys atomically"},
    {"counters", fc_counters, METH_O, "counters(slot) -> tuple"},
    {"address", fc_address, METH_O, "address(slot) -> the slot's callback address"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stek.hazmat._fastcb",
    "HAZMAT: stek's ticket-key callback in C (see stek.installation).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcb(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    /* 2: acquire() takes the SSL_CTX whose slot it may take back. */
    PyModule_AddIntConstant(m, "API", 2);
    PyModule_AddIntConstant(m, "SLOTS", NSLOTS);
    PyModule_AddIntConstant(m, "MAX_KEYS", MAXKEYS);
    return m;
}
