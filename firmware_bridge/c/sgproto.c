/* Reference implementation of the sonoguide probe protocol; see sgproto.h and docs/protocol.md. */
#include "sgproto.h"

#include <string.h>

static uint32_t crc_table[256];
static int crc_ready;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint32_t sg_crc32_update(uint32_t crc, const uint8_t *data, size_t len) {
    if (!crc_ready) crc_init();
    crc = ~crc;
    for (size_t i = 0; i < len; i++) crc = crc_table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

uint8_t sg_crc8(const uint8_t *data, size_t len) {
    uint8_t c = 0;
    for (size_t i = 0; i < len; i++) {
        c ^= data[i];
        for (int k = 0; k < 8; k++) c = (uint8_t)((c & 0x80u) ? ((unsigned)c << 1) ^ 0x07u : (unsigned)c << 1);
    }
    return c;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

size_t sg_encode_frame(uint8_t type, uint16_t seq, const uint8_t *payload, size_t len, uint8_t *out, size_t cap) {
    if (len > SG_MAX_PAYLOAD || cap < len + SG_HEADER_SIZE + SG_CRC_SIZE) return 0;
    out[0] = SG_MAGIC0; out[1] = SG_MAGIC1; out[2] = type;
    put16(out + 3, seq);
    put16(out + 5, (uint16_t)len);
    out[7] = sg_crc8(out + 2, 5);
    if (len) memcpy(out + SG_HEADER_SIZE, payload, len);
    put32(out + SG_HEADER_SIZE + len, sg_crc32_update(0, out + 2, SG_HEADER_SIZE - 2 + len));
    return len + SG_HEADER_SIZE + SG_CRC_SIZE;
}

void sg_decoder_init(sg_decoder *d) { memset(d, 0, sizeof *d); }

size_t sg_decoder_push(sg_decoder *d, const uint8_t *data, size_t n) {
    if (d->consumed) {
        memmove(d->buf, d->buf + d->consumed, d->len - d->consumed);
        d->len -= d->consumed;
        d->consumed = 0;
    }
    size_t room = sizeof d->buf - d->len;
    size_t take = n < room ? n : room;
    memcpy(d->buf + d->len, data, take);
    d->len += take;
    return take;
}

int sg_decoder_next(sg_decoder *d, sg_frame *out) {
    for (;;) {
        size_t pos = d->consumed, i = pos;
        while (i + 1 < d->len && !(d->buf[i] == SG_MAGIC0 && d->buf[i + 1] == SG_MAGIC1)) i++;
        if (i + 1 >= d->len) { /* no magic: keep a trailing first magic byte, it may start the next frame */
            size_t keep = (d->len > pos && d->buf[d->len - 1] == SG_MAGIC0) ? 1 : 0;
            d->discarded_bytes += (uint32_t)(d->len - keep - pos);
            d->consumed = d->len - keep;
            return 0;
        }
        d->discarded_bytes += (uint32_t)(i - pos);
        d->consumed = i;
        if (d->len - i < SG_HEADER_SIZE) return 0;
        if (sg_crc8(d->buf + i + 2, 5) != d->buf[i + 7]) {
            d->header_errors++; d->discarded_bytes++; d->consumed = i + 1; continue;
        }
        uint16_t len = get16(d->buf + i + 5);
        if (len > SG_MAX_PAYLOAD) { d->oversize++; d->discarded_bytes++; d->consumed = i + 1; continue; }
        size_t end = i + SG_HEADER_SIZE + len;
        if (d->len < end + SG_CRC_SIZE) return 0;
        if (sg_crc32_update(0, d->buf + i + 2, SG_HEADER_SIZE - 2 + len) != get32(d->buf + end)) {
            d->crc_errors++; d->discarded_bytes++; d->consumed = i + 1; continue;
        }
        out->type = d->buf[i + 2];
        out->seq = get16(d->buf + i + 3);
        out->payload = d->buf + i + SG_HEADER_SIZE;
        out->len = len;
        d->frames_ok++;
        d->consumed = end + SG_CRC_SIZE;
        return 1;
    }
}

/* ---- payload cursor: every read is bounds-checked; an overrun sets err ------------------------------ */
typedef struct { const uint8_t *p; size_t n, pos; int err; } rd;

static const uint8_t *take(rd *r, size_t k) {
    if (r->err || r->n - r->pos < k) { r->err = 1; return NULL; }
    const uint8_t *q = r->p + r->pos;
    r->pos += k;
    return q;
}
static uint8_t r8(rd *r) { const uint8_t *q = take(r, 1); return q ? q[0] : 0; }
static uint16_t r16(rd *r) { const uint8_t *q = take(r, 2); return q ? get16(q) : 0; }
static uint32_t r32(rd *r) { const uint8_t *q = take(r, 4); return q ? get32(q) : 0; }
static uint64_t r64(rd *r) { uint64_t lo = r32(r); return lo | ((uint64_t)r32(r) << 32); }
static float rf(rd *r) { uint32_t u = r32(r); float f; memcpy(&f, &u, 4); return f; }
static void rstr(rd *r, char *dst) {
    uint8_t k = r8(r);
    const uint8_t *q = (k <= SG_MAX_STR) ? take(r, k) : NULL;
    if (!q) { r->err = 1; dst[0] = 0; return; }
    memcpy(dst, q, k);
    dst[k] = 0;
}
static uint8_t rlist(rd *r, float *dst) {
    uint8_t k = r8(r);
    if (k > SG_MAX_LIST) { r->err = 1; return 0; }
    for (uint8_t j = 0; j < k; j++) dst[j] = rf(r);
    return k;
}

typedef struct { uint8_t *p; size_t cap, pos; int err; } wr;

static uint8_t *room(wr *w, size_t k) {
    if (w->err || w->cap - w->pos < k) { w->err = 1; return NULL; }
    uint8_t *q = w->p + w->pos;
    w->pos += k;
    return q;
}
static void w8(wr *w, uint8_t v) { uint8_t *q = room(w, 1); if (q) q[0] = v; }
static void w16(wr *w, uint16_t v) { uint8_t *q = room(w, 2); if (q) put16(q, v); }
static void w32(wr *w, uint32_t v) { uint8_t *q = room(w, 4); if (q) put32(q, v); }
static void w64(wr *w, uint64_t v) { w32(w, (uint32_t)v); w32(w, (uint32_t)(v >> 32)); }
static void wf(wr *w, float f) { uint32_t u; memcpy(&u, &f, 4); w32(w, u); }
static void wstr(wr *w, const char *s) {
    size_t k = strlen(s);
    if (k > SG_MAX_STR) { w->err = 1; return; }
    w8(w, (uint8_t)k);
    uint8_t *q = room(w, k);
    if (q) memcpy(q, s, k);
}
static void wlist(wr *w, const float *v, uint8_t k) {
    if (k > SG_MAX_LIST) { w->err = 1; return; }
    w8(w, k);
    for (uint8_t j = 0; j < k; j++) wf(w, v[j]);
}

int sg_decode_msg(uint8_t type, const uint8_t *payload, size_t len, sg_msg *m) {
    rd r = {payload, len, 0, 0};
    memset(m, 0, sizeof *m);
    m->type = type;
    switch (type) {
    case SG_HELLO: m->u.hello.major = r8(&r); m->u.hello.minor = r8(&r); m->u.hello.max_payload = r16(&r); break;
    case SG_IDENTIFY: {
        struct sg_identify *v = &m->u.identify;
        v->major = r8(&r); v->minor = r8(&r); v->boot_id = r32(&r);
        rstr(&r, v->firmware); rstr(&r, v->model); rstr(&r, v->serial);
        v->gain_min = rf(&r); v->gain_max = rf(&r); v->gain_step = rf(&r);
        v->n_depths = rlist(&r, v->depths_mm); v->n_freqs = rlist(&r, v->freqs_mhz);
        v->tgc_bands = r8(&r); v->tgc_min = rf(&r); v->tgc_max = rf(&r); v->tgc_step = rf(&r);
        v->width = r16(&r); v->height = r16(&r); v->fps = rf(&r); v->max_payload = r16(&r);
        break;
    }
    case SG_GET_PARAM:
    case SG_SET_PARAM:
    case SG_PARAM_VALUE:
        m->u.param.req = r16(&r); m->u.param.param = r8(&r); m->u.param.index = r8(&r);
        if (type != SG_GET_PARAM) m->u.param.value = rf(&r);
        break;
    case SG_NACK: m->u.nack.req = r16(&r); m->u.nack.param = r8(&r); m->u.nack.index = r8(&r); m->u.nack.error = r8(&r); break;
    case SG_FREEZE: m->u.freeze.req = r16(&r); m->u.freeze.frozen = r8(&r); break;
    case SG_FRAME_HEADER: {
        struct sg_frame_header *v = &m->u.frame_header;
        v->frame_id = r32(&r); v->device_ts_us = r64(&r); v->width = r16(&r); v->height = r16(&r);
        v->chunk_count = r16(&r); v->flags = r8(&r); v->gain_db = rf(&r); v->depth_mm = rf(&r); v->freq_mhz = rf(&r);
        v->n_tgc = rlist(&r, v->tgc_db);
        break;
    }
    case SG_FRAME_CHUNK:
        m->u.chunk.frame_id = r32(&r); m->u.chunk.chunk_index = r16(&r); m->u.chunk.chunk_count = r16(&r);
        if (!r.err) { m->u.chunk.data = payload + r.pos; m->u.chunk.len = (uint16_t)(len - r.pos); r.pos = len; }
        break;
    case SG_EVENT: {
        struct sg_event *v = &m->u.event;
        v->event_id = r16(&r); v->code = r8(&r); v->source = r8(&r); v->device_ts_us = r64(&r);
        v->param = r8(&r); v->index = r8(&r); v->value = rf(&r);
        break;
    }
    case SG_HEARTBEAT: {
        struct sg_heartbeat *v = &m->u.heartbeat;
        v->device_ts_us = r64(&r); v->boot_id = r32(&r); v->temperature_c = rf(&r); v->battery_pct = r8(&r);
        v->flags = r8(&r); v->rx_ok = r32(&r); v->rx_crc_errors = r32(&r); v->rx_discarded_bytes = r32(&r);
        v->tx_messages = r32(&r); v->frames_sent = r32(&r);
        break;
    }
    case SG_TIME_SYNC_REQ:
    case SG_TIME_SYNC_RESP:
        m->u.time_sync.req = r16(&r); m->u.time_sync.host_ts_us = r64(&r);
        if (type == SG_TIME_SYNC_RESP) m->u.time_sync.device_ts_us = r64(&r);
        break;
    case SG_ERROR:
        m->u.error.code = r8(&r); m->u.error.ref_type = r8(&r); m->u.error.ref_seq = r16(&r); rstr(&r, m->u.error.text);
        break;
    default: return -2;
    }
    return (r.err || r.pos != len) ? -1 : 0;
}

size_t sg_encode_msg(const sg_msg *m, uint8_t *out, size_t cap) {
    wr w = {out, cap, 0, 0};
    switch (m->type) {
    case SG_HELLO: w8(&w, m->u.hello.major); w8(&w, m->u.hello.minor); w16(&w, m->u.hello.max_payload); break;
    case SG_IDENTIFY: {
        const struct sg_identify *v = &m->u.identify;
        w8(&w, v->major); w8(&w, v->minor); w32(&w, v->boot_id);
        wstr(&w, v->firmware); wstr(&w, v->model); wstr(&w, v->serial);
        wf(&w, v->gain_min); wf(&w, v->gain_max); wf(&w, v->gain_step);
        wlist(&w, v->depths_mm, v->n_depths); wlist(&w, v->freqs_mhz, v->n_freqs);
        w8(&w, v->tgc_bands); wf(&w, v->tgc_min); wf(&w, v->tgc_max); wf(&w, v->tgc_step);
        w16(&w, v->width); w16(&w, v->height); wf(&w, v->fps); w16(&w, v->max_payload);
        break;
    }
    case SG_GET_PARAM:
    case SG_SET_PARAM:
    case SG_PARAM_VALUE:
        w16(&w, m->u.param.req); w8(&w, m->u.param.param); w8(&w, m->u.param.index);
        if (m->type != SG_GET_PARAM) wf(&w, m->u.param.value);
        break;
    case SG_NACK: w16(&w, m->u.nack.req); w8(&w, m->u.nack.param); w8(&w, m->u.nack.index); w8(&w, m->u.nack.error); break;
    case SG_FREEZE: w16(&w, m->u.freeze.req); w8(&w, m->u.freeze.frozen); break;
    case SG_FRAME_HEADER: {
        const struct sg_frame_header *v = &m->u.frame_header;
        w32(&w, v->frame_id); w64(&w, v->device_ts_us); w16(&w, v->width); w16(&w, v->height);
        w16(&w, v->chunk_count); w8(&w, v->flags); wf(&w, v->gain_db); wf(&w, v->depth_mm); wf(&w, v->freq_mhz);
        wlist(&w, v->tgc_db, v->n_tgc);
        break;
    }
    case SG_FRAME_CHUNK: {
        w32(&w, m->u.chunk.frame_id); w16(&w, m->u.chunk.chunk_index); w16(&w, m->u.chunk.chunk_count);
        uint8_t *q = m->u.chunk.len > SG_CHUNK_DATA_MAX ? (w.err = 1, NULL) : room(&w, m->u.chunk.len);
        if (q && m->u.chunk.len) memcpy(q, m->u.chunk.data, m->u.chunk.len);
        break;
    }
    case SG_EVENT: {
        const struct sg_event *v = &m->u.event;
        w16(&w, v->event_id); w8(&w, v->code); w8(&w, v->source); w64(&w, v->device_ts_us);
        w8(&w, v->param); w8(&w, v->index); wf(&w, v->value);
        break;
    }
    case SG_HEARTBEAT: {
        const struct sg_heartbeat *v = &m->u.heartbeat;
        w64(&w, v->device_ts_us); w32(&w, v->boot_id); wf(&w, v->temperature_c); w8(&w, v->battery_pct);
        w8(&w, v->flags); w32(&w, v->rx_ok); w32(&w, v->rx_crc_errors); w32(&w, v->rx_discarded_bytes);
        w32(&w, v->tx_messages); w32(&w, v->frames_sent);
        break;
    }
    case SG_TIME_SYNC_REQ:
    case SG_TIME_SYNC_RESP:
        w16(&w, m->u.time_sync.req); w64(&w, m->u.time_sync.host_ts_us);
        if (m->type == SG_TIME_SYNC_RESP) w64(&w, m->u.time_sync.device_ts_us);
        break;
    case SG_ERROR:
        w8(&w, m->u.error.code); w8(&w, m->u.error.ref_type); w16(&w, m->u.error.ref_seq); wstr(&w, m->u.error.text);
        break;
    default: return 0;
    }
    return (w.err || w.pos > SG_MAX_PAYLOAD) ? 0 : w.pos;
}
