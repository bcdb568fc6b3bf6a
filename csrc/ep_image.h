/*
 * ep_image.h: the fixed header in front of every numpy frame edgepipe moves (edgepipe/frames.py).
 *
 * The same 128-byte header starts a frame record in a ring (record type EP_IMAGE_REC_TYPE) and each
 * buffer of a latest-only slot (ep_latest.c). The pixels follow at data_off bytes from the start of
 * the header, chosen so the pixel address is a multiple of EP_IMAGE_ALIGN in every process (ring data
 * areas and latest-slot buffers start page-aligned, so an offset decides the alignment).
 *
 * All fields are little-endian host integers. A reader trusts nothing: magic, version, dtype, ndim,
 * shape, strides, data_off and nbytes are checked against each other and against the record length
 * before an array is built over the bytes. Only C-contiguous arrays are written today; strides are
 * stored so a reader in another language needs nothing but this header.
 */
#ifndef EP_IMAGE_H
#define EP_IMAGE_H

#include <stdint.h>

#define EP_IMAGE_MAGIC 0x4D465045u    /* "EPFM" */
#define EP_IMAGE_VERSION 1u
#define EP_IMAGE_HDR_SIZE 128u        /* sizeof(struct ep_frame_hdr) */
#define EP_IMAGE_ALIGN 64u            /* pixel data alignment in bytes */
#define EP_IMAGE_MAX_NDIM 4u
#define EP_IMAGE_REC_TYPE 0x46524D31u /* ring record type of a frame record ("1MRF") */

/* dtype codes (native little-endian numpy dtypes) */
#define EP_DT_BOOL 1u
#define EP_DT_U8 2u
#define EP_DT_I8 3u
#define EP_DT_U16 4u
#define EP_DT_I16 5u
#define EP_DT_U32 6u
#define EP_DT_I32 7u
#define EP_DT_U64 8u
#define EP_DT_I64 9u
#define EP_DT_F16 10u
#define EP_DT_F32 11u
#define EP_DT_F64 12u

/* pixel formats (edgepipe.frames.PIXEL_FORMATS, in this order) */
#define EP_PIX_BGR 0u
#define EP_PIX_RGB 1u
#define EP_PIX_GRAY 2u
#define EP_PIX_NV12 3u
#define EP_PIX_I420 4u
#define EP_PIX_RAW 5u

struct ep_frame_hdr {
    uint32_t magic;        /* EP_IMAGE_MAGIC */
    uint16_t version;      /* EP_IMAGE_VERSION */
    uint8_t dtype;         /* EP_DT_* */
    uint8_t ndim;          /* 1..EP_IMAGE_MAX_NDIM */
    uint32_t pixel_format; /* EP_PIX_* */
    uint32_t data_off;     /* pixels start this many bytes after the header's first byte */
    uint64_t nbytes;       /* pixel bytes: product(shape) * itemsize */
    uint64_t seq;          /* per writer, 1, 2, 3, ... */
    int64_t capture_ns;    /* CLOCK_MONOTONIC_RAW when the source produced it (edgepipe.clock) */
    int64_t publish_ns;    /* CLOCK_MONOTONIC_RAW just before the record was made visible */
    uint64_t source_id;    /* which camera/stream, caller-defined */
    uint64_t shape[4];     /* EP_IMAGE_MAX_NDIM; unused dimensions are 0 */
    int64_t strides[4];    /* bytes; unused dimensions are 0 */
    uint64_t reserved;     /* 0 */
};

#endif
