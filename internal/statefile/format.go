package statefile

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// maxHeader bounds the header line; a real one is well under 100 bytes.
const maxHeader = 100

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Format is a kind of state file: its magic and body version.
type Format struct {
	// Magic is the header's first word, e.g. "nodeplane-ipam-state". It
	// must not contain a space or a newline.
	Magic string
	// Version is the body format written, and the only one read.
	Version uint32
	// MaxBody bounds the body length a header may announce; zero means no
	// bound.
	MaxBody uint64
	// Legacy also reads the header spelling identity's allocator wrote
	// before this package existed:
	//
	//	<magic> v<version> length=<body length> crc32c=<hex>
	//
	// Encode always writes the current spelling, so a file read this way
	// is rewritten in it by the next save.
	Legacy bool
}

// Encode returns the file content for body: the header, then body.
func (f Format) Encode(body []byte) []byte {
	header := fmt.Sprintf("%s %d %d %08x\n", f.Magic, f.Version, len(body), crc32.Checksum(body, castagnoli))
	return append([]byte(header), body...)
}

// Decode checks the header of data against f, and the body against the
// header's length and checksum, and returns the body. Every error wraps
// [ErrCorrupt].
func (f Format) Decode(data []byte) ([]byte, error) {
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 || nl > maxHeader {
		return nil, fmt.Errorf("no header line (torn write?): %w", ErrCorrupt)
	}
	header, body := string(data[:nl]), data[nl+1:]
	length, sum, err := f.parseHeader(header)
	if err != nil {
		return nil, err
	}
	if f.MaxBody > 0 && length > f.MaxBody {
		return nil, fmt.Errorf("header announces a %d-byte body, more than the %d bytes allowed: %w", length, f.MaxBody, ErrCorrupt)
	}
	if uint64(len(body)) != length {
		return nil, fmt.Errorf("body is %d bytes, header says %d (torn write?): %w", len(body), length, ErrCorrupt)
	}
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return nil, fmt.Errorf("checksum mismatch: header %08x, body %08x: %w", sum, got, ErrCorrupt)
	}
	return body, nil
}

// parseHeader returns the body length and checksum a header announces.
func (f Format) parseHeader(header string) (length uint64, sum uint32, err error) {
	fields := strings.Split(header, " ")
	if len(fields) != 4 || fields[0] != f.Magic {
		return 0, 0, fmt.Errorf("header %q is not a %s header: %w", header, f.Magic, ErrCorrupt)
	}
	version, lengthField, sumField := fields[1], fields[2], fields[3]
	if f.Legacy && strings.HasPrefix(version, "v") {
		// Identity's first spelling: "v1 length=<n> crc32c=<hex>".
		var ok1, ok2 bool
		version = version[1:]
		lengthField, ok1 = strings.CutPrefix(lengthField, "length=")
		sumField, ok2 = strings.CutPrefix(sumField, "crc32c=")
		if !ok1 || !ok2 || sumField == "" {
			return 0, 0, fmt.Errorf("bad header %q: %w", header, ErrCorrupt)
		}
	} else if len(sumField) != 8 {
		return 0, 0, fmt.Errorf("checksum %q is not 8 hex digits: %w", sumField, ErrCorrupt)
	}
	if v, err := strconv.ParseUint(version, 10, 32); err != nil || v != uint64(f.Version) {
		return 0, 0, fmt.Errorf("version %q, this build reads version %d: %w", version, f.Version, ErrCorrupt)
	}
	length, err = strconv.ParseUint(lengthField, 10, 63)
	if err != nil {
		return 0, 0, fmt.Errorf("body length %q: %w", lengthField, ErrCorrupt)
	}
	s, err := strconv.ParseUint(sumField, 16, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("checksum %q: %w", sumField, ErrCorrupt)
	}
	return length, uint32(s), nil
}
