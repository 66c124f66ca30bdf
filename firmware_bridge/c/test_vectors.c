/* Reads test vectors on stdin and prints what the C implementation makes of them, for the Python test
 * to compare with vectors.json (firmware_bridge/tests: test_c_reference.py). Line formats:
 *   crc TEXT     -> "crc XXXXXXXX"
 *   msg HEX      -> one "name=value" line per field (schema order), "reencode=ok|mismatch", "--"
 *   stream HEX   -> "frame HEX" per decoded frame, then counters, then "--"                              */
#include "sgproto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t bytes[3 * SG_MAX_FRAME];
static char line[8 * SG_MAX_FRAME];

static size_t unhex(const char *h, uint8_t *out, size_t cap) {
    size_t n = 0;
    while (h[0] && h[1] && h[0] != '\n' && n < cap) {
        unsigned v;
        if (sscanf(h, "%2x", &v) != 1) break;
        out[n++] = (uint8_t)v;
        h += 2;
    }
    return n;
}

static void hex(const uint8_t *p, size_t n) { for (size_t i = 0; i < n; i++) printf("%02x", p[i]); }
static void flist(const char *name, const float *v, uint8_t n) {
    printf("%s=", name);
    for (uint8_t i = 0; i < n; i++) printf(i ? ",%.9g" : "%.9g", (double)v[i]);
    printf("\n");
}

static void print_msg(const sg_msg *m) {
    switch (m->type) {
    case SG_HELLO: printf("major=%u\nminor=%u\nmax_payload=%u\n", m->u.hello.major, m->u.hello.minor, m->u.hello.max_payload); break;
    case SG_IDENTIFY: {
        const struct sg_identify *v = &m->u.identify;
        printf("major=%u\nminor=%u\nboot_id=%lu\nfirmware=%s\nmodel=%s\nserial=%s\n", v->major, v->minor,
               (unsigned long)v->boot_id, v->firmware, v->model, v->serial);
        printf("gain_min=%.9g\ngain_max=%.9g\ngain_step=%.9g\n", (double)v->gain_min, (double)v->gain_max, (double)v->gain_step);
        flist("depths_mm", v->depths_mm, v->n_depths);
        flist("freqs_mhz", v->freqs_mhz, v->n_freqs);
        printf("tgc_bands=%u\ntgc_min=%.9g\ntgc_max=%.9g\ntgc_step=%.9g\n", v->tgc_bands, (double)v->tgc_min,
               (double)v->tgc_max, (double)v->tgc_step);
        printf("width=%u\nheight=%u\nfps=%.9g\nmax_payload=%u\n", v->width, v->height, (double)v->fps, v->max_payload);
        break;
    }
    case SG_GET_PARAM:
    case SG_SET_PARAM:
    case SG_PARAM_VALUE:
        printf("req=%u\nparam=%u\nindex=%u\n", m->u.param.req, m->u.param.param, m->u.param.index);
        if (m->type != SG_GET_PARAM) printf("value=%.9g\n", (double)m->u.param.value);
        break;
    case SG_NACK: printf("req=%u\nparam=%u\nindex=%u\nerror=%u\n", m->u.nack.req, m->u.nack.param, m->u.nack.index, m->u.nack.error); break;
    case SG_FREEZE: printf("req=%u\nfrozen=%u\n", m->u.freeze.req, m->u.freeze.frozen); break;
    case SG_FRAME_HEADER: {
        const struct sg_frame_header *v = &m->u.frame_header;
        printf("frame_id=%lu\ndevice_ts_us=%llu\nwidth=%u\nheight=%u\nchunk_count=%u\nflags=%u\n", (unsigned long)v->frame_id,
               (unsigned long long)v->device_ts_us, v->width, v->height, v->chunk_count, v->flags);
        printf("gain_db=%.9g\ndepth_mm=%.9g\nfreq_mhz=%.9g\n", (double)v->gain_db, (double)v->depth_mm, (double)v->freq_mhz);
        flist("tgc_db", v->tgc_db, v->n_tgc);
        break;
    }
    case SG_FRAME_CHUNK:
        printf("frame_id=%lu\nchunk_index=%u\nchunk_count=%u\ndata=", (unsigned long)m->u.chunk.frame_id,
               m->u.chunk.chunk_index, m->u.chunk.chunk_count);
        hex(m->u.chunk.data, m->u.chunk.len);
        printf("\n");
        break;
    case SG_EVENT: {
        const struct sg_event *v = &m->u.event;
        printf("event_id=%u\ncode=%u\nsource=%u\ndevice_ts_us=%llu\nparam=%u\nindex=%u\nvalue=%.9g\n", v->event_id, v->code,
               v->source, (unsigned long long)v->device_ts_us, v->param, v->index, (double)v->value);
        break;
    }
    case SG_HEARTBEAT: {
        const struct sg_heartbeat *v = &m->u.heartbeat;
        printf("device_ts_us=%llu\nboot_id=%lu\ntemperature_c=%.9g\nbattery_pct=%u\nflags=%u\n", (unsigned long long)v->device_ts_us,
               (unsigned long)v->boot_id, (double)v->temperature_c, v->battery_pct, v->flags);
        printf("rx_ok=%lu\nrx_crc_errors=%lu\nrx_discarded_bytes=%lu\ntx_messages=%lu\nframes_sent=%lu\n", (unsigned long)v->rx_ok,
               (unsigned long)v->rx_crc_errors, (unsigned long)v->rx_discarded_bytes, (unsigned long)v->tx_messages,
               (unsigned long)v->frames_sent);
        break;
    }
    case SG_TIME_SYNC_REQ:
    case SG_TIME_SYNC_RESP:
        printf("req=%u\nhost_ts_us=%llu\n", m->u.time_sync.req, (unsigned long long)m->u.time_sync.host_ts_us);
        if (m->type == SG_TIME_SYNC_RESP) printf("device_ts_us=%llu\n", (unsigned long long)m->u.time_sync.device_ts_us);
        break;
    case SG_ERROR: printf("code=%u\nref_type=%u\nref_seq=%u\ntext=%s\n", m->u.error.code, m->u.error.ref_type, m->u.error.ref_seq, m->u.error.text); break;
    default: break;
    }
}

static sg_decoder dec;

int main(void) {
    static uint8_t payload[SG_MAX_PAYLOAD], frame[SG_MAX_FRAME];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "crc ", 4) == 0) {
            const uint8_t *text = (const uint8_t *)line + 4;
            printf("crc %08lx\ncrc8=%02x\n--\n", (unsigned long)sg_crc32_update(0, text, strlen(line + 4)),
                   sg_crc8(text, strlen(line + 4)));
        } else if (strncmp(line, "msg ", 4) == 0) {
            size_t n = unhex(line + 4, bytes, sizeof bytes);
            sg_decoder_init(&dec);
            sg_decoder_push(&dec, bytes, n);
            sg_frame f;
            sg_msg m;
            if (!sg_decoder_next(&dec, &f)) { printf("error=no frame\n--\n"); continue; }
            int rc = sg_decode_msg(f.type, f.payload, f.len, &m);
            if (rc) { printf("error=decode %d\n--\n", rc); continue; }
            printf("type=%u\nseq=%u\n", f.type, f.seq);
            print_msg(&m);
            size_t plen = sg_encode_msg(&m, payload, sizeof payload);
            size_t flen = sg_encode_frame(m.type, f.seq, payload, plen, frame, sizeof frame);
            printf("reencode=%s\n--\n", (flen == n && memcmp(frame, bytes, n) == 0) ? "ok" : "mismatch");
        } else if (strncmp(line, "stream ", 7) == 0) {
            size_t n = unhex(line + 7, bytes, sizeof bytes);
            sg_decoder_init(&dec);
            sg_frame f;
            for (size_t off = 0; off < n; off += 7) { /* arrives in small pieces, as from a UART */
                size_t k = n - off < 7 ? n - off : 7;
                sg_decoder_push(&dec, bytes + off, k);
                while (sg_decoder_next(&dec, &f)) {
                    size_t flen = sg_encode_frame(f.type, f.seq, f.payload, f.len, frame, sizeof frame);
                    printf("frame ");
                    hex(frame, flen);
                    printf("\n");
                }
            }
            printf("crc_errors=%lu\nheader_errors=%lu\ndiscarded_bytes=%lu\noversize=%lu\n--\n",
                   (unsigned long)dec.crc_errors, (unsigned long)dec.header_errors, (unsigned long)dec.discarded_bytes,
                   (unsigned long)dec.oversize);
        }
        fflush(stdout);
    }
    return 0;
}
