/* sonoguide probe protocol 1.0: framing, CRC and message encode/decode (reference, C99, no malloc).
 * The byte-level specification is docs/protocol.md; the test vectors are firmware_bridge/vectors.json. */
#ifndef SGPROTO_H
#define SGPROTO_H

#include <stddef.h>
#include <stdint.h>

#define SG_MAGIC0 0x53u /* 'S' */
#define SG_MAGIC1 0x47u /* 'G' */
#define SG_HEADER_SIZE 8u
#define SG_CRC_SIZE 4u
#define SG_CHUNK_DATA_MAX 4096u
#define SG_MAX_PAYLOAD (SG_CHUNK_DATA_MAX + 8u)
#define SG_MAX_FRAME (SG_MAX_PAYLOAD + SG_HEADER_SIZE + SG_CRC_SIZE)
#define SG_PROTOCOL_MAJOR 1u
#define SG_PROTOCOL_MINOR 0u
#define SG_MAX_STR 64u
#define SG_MAX_LIST 32u

enum sg_type {
    SG_HELLO = 0x01, SG_IDENTIFY = 0x02,
    SG_GET_PARAM = 0x10, SG_SET_PARAM = 0x11, SG_PARAM_VALUE = 0x12, SG_NACK = 0x13, SG_FREEZE = 0x14,
    SG_FRAME_HEADER = 0x20, SG_FRAME_CHUNK = 0x21, SG_EVENT = 0x30, SG_HEARTBEAT = 0x40,
    SG_TIME_SYNC_REQ = 0x50, SG_TIME_SYNC_RESP = 0x51, SG_ERROR = 0x60
};

/* CRC-32/ISO-HDLC (zlib): poly 0x04C11DB7 reflected, init 0xFFFFFFFF, xorout 0xFFFFFFFF, check 0xCBF43926.
 * sg_crc32_update(0, ...) starts a new CRC; pass the previous result to continue it. */
uint32_t sg_crc32_update(uint32_t crc, const uint8_t *data, size_t len);
/* CRC-8/SMBUS of the header bytes 2..6: poly 0x07, init 0, not reflected, xorout 0, check 0xF4. */
uint8_t sg_crc8(const uint8_t *data, size_t len);

/* Writes one complete frame; returns its length, or 0 if it does not fit or the payload is too large. */
size_t sg_encode_frame(uint8_t type, uint16_t seq, const uint8_t *payload, size_t len, uint8_t *out, size_t cap);

typedef struct {
    uint8_t type;
    uint16_t seq;
    const uint8_t *payload; /* points into the decoder's buffer: valid until the next sg_decoder_feed */
    uint16_t len;
} sg_frame;

typedef struct {
    uint8_t buf[2 * SG_MAX_FRAME];
    size_t len;
    size_t consumed;        /* bytes of buf already handed out or discarded */
    uint32_t frames_ok, crc_errors, header_errors, oversize, discarded_bytes;
} sg_decoder;

void sg_decoder_init(sg_decoder *d);
/* Appends up to *n bytes from data (sets *n to how many were taken) ... */
size_t sg_decoder_push(sg_decoder *d, const uint8_t *data, size_t n);
/* ... then call sg_decoder_next until it returns 0: each 1 is one frame whose CRC checks. Garbage is
 * skipped to the next magic and counted; memory never exceeds the fixed buffer. */
int sg_decoder_next(sg_decoder *d, sg_frame *out);

typedef struct {
    uint8_t type;
    union {
        struct { uint8_t major, minor; uint16_t max_payload; } hello;
        struct sg_identify {
            uint8_t major, minor; uint32_t boot_id;
            char firmware[SG_MAX_STR + 1], model[SG_MAX_STR + 1], serial[SG_MAX_STR + 1];
            float gain_min, gain_max, gain_step;
            uint8_t n_depths; float depths_mm[SG_MAX_LIST];
            uint8_t n_freqs; float freqs_mhz[SG_MAX_LIST];
            uint8_t tgc_bands; float tgc_min, tgc_max, tgc_step;
            uint16_t width, height; float fps; uint16_t max_payload;
        } identify;
        struct { uint16_t req; uint8_t param, index; float value; } param; /* GET (value unused), SET, PARAM_VALUE */
        struct { uint16_t req; uint8_t param, index, error; } nack;
        struct { uint16_t req; uint8_t frozen; } freeze;
        struct sg_frame_header {
            uint32_t frame_id; uint64_t device_ts_us; uint16_t width, height, chunk_count; uint8_t flags;
            float gain_db, depth_mm, freq_mhz; uint8_t n_tgc; float tgc_db[SG_MAX_LIST];
        } frame_header;
        struct { uint32_t frame_id; uint16_t chunk_index, chunk_count; const uint8_t *data; uint16_t len; } chunk;
        struct sg_event { uint16_t event_id; uint8_t code, source; uint64_t device_ts_us; uint8_t param, index; float value; } event;
        struct sg_heartbeat {
            uint64_t device_ts_us; uint32_t boot_id; float temperature_c; uint8_t battery_pct, flags;
            uint32_t rx_ok, rx_crc_errors, rx_discarded_bytes, tx_messages, frames_sent;
        } heartbeat;
        struct { uint16_t req; uint64_t host_ts_us; uint64_t device_ts_us; } time_sync; /* device_ts_us: RESP only */
        struct { uint8_t code, ref_type; uint16_t ref_seq; char text[SG_MAX_STR + 1]; } error;
    } u;
} sg_msg;

/* 0 on success, -1 on a payload that does not match its type's layout, -2 on an unknown type. */
int sg_decode_msg(uint8_t type, const uint8_t *payload, size_t len, sg_msg *out);
/* Payload bytes written, or 0 if it does not fit in cap (or the type is unknown). */
size_t sg_encode_msg(const sg_msg *m, uint8_t *out, size_t cap);

#endif
