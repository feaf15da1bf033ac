package statefile

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"testing"
)

var testFormat = Format{Magic: "nodeplane-test-state", Version: 3, MaxBody: 64}

func TestFormatRoundTrip(t *testing.T) {
	for _, body := range []string{"", "{}", "a\nb\nc", string(bytes.Repeat([]byte{0xff}, 64))} {
		data := testFormat.Encode([]byte(body))
		// The header is written out by hand here, not by Encode.
		want := fmt.Sprintf("nodeplane-test-state 3 %d %08x\n%s", len(body), crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli)), body)
		if string(data) != want {
			t.Errorf("Encode(%q) = %q, want %q", body, data, want)
		}
		got, err := testFormat.Decode(data)
		if err != nil || string(got) != body {
			t.Errorf("Decode(Encode(%q)) = %q, %v", body, got, err)
		}
	}
}

func TestFormatRejects(t *testing.T) {
	good := testFormat.Encode([]byte("hello"))
	legacy := legacyFile("hello")
	for name, data := range map[string][]byte{
		"empty":            {},
		"no newline":       good[:len(good)-6],
		"torn body":        good[:len(good)-1],
		"trailing byte":    append(bytes.Clone(good), 'x'),
		"flipped body bit": append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]^1),
		"other magic":      []byte("nodeplane-other-state 3 5 00000000\nhello"),
		"other version":    Format{Magic: testFormat.Magic, Version: 4}.Encode([]byte("hello")),
		"short checksum":   []byte(fmt.Sprintf("nodeplane-test-state 3 5 %x\nhello", crc32.Checksum([]byte("hello"), castagnoli)&0xfff)),
		"bad length":       []byte("nodeplane-test-state 3 five 00000000\nhello"),
		"negative length":  []byte("nodeplane-test-state 3 -5 00000000\nhello"),
		"extra field":      append([]byte("nodeplane-test-state 3 5 00000000 x\n"), "hello"...),
		"body over max":    Format{Magic: testFormat.Magic, Version: 3}.Encode(make([]byte, 65)),
		"header too long":  append(bytes.Repeat([]byte(" "), maxHeader+1), '\n'),
		"legacy, not read": legacy,
	} {
		if body, err := testFormat.Decode(data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Decode = %q, %v; want ErrCorrupt", name, body, err)
		}
	}
}

// legacyFile is a file as identity's allocator wrote it before this
// package: "<magic> v<version> length=<n> crc32c=<hex>".
func legacyFile(body string) []byte {
	return []byte(fmt.Sprintf("%s v%d length=%d crc32c=%08x\n%s", testFormat.Magic, testFormat.Version, len(body),
		crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli)), body))
}

func TestFormatLegacy(t *testing.T) {
	f := testFormat
	f.Legacy = true
	got, err := f.Decode(legacyFile(`{"a":1}`))
	if err != nil || string(got) != `{"a":1}` {
		t.Fatalf("Decode(legacy) = %q, %v", got, err)
	}
	if got, err := f.Decode(f.Encode([]byte("x"))); err != nil || string(got) != "x" {
		t.Fatalf("Decode(current) with Legacy = %q, %v", got, err)
	}
	for name, data := range map[string][]byte{
		"other version":   []byte("nodeplane-test-state v4 length=1 crc32c=00000000\nx"),
		"no length key":   []byte("nodeplane-test-state v3 1 crc32c=00000000\nx"),
		"no checksum key": []byte("nodeplane-test-state v3 length=1 00000000\nx"),
		"empty checksum":  []byte("nodeplane-test-state v3 length=1 crc32c=\nx"),
		"torn":            legacyFile("hello")[:50],
		"bad checksum":    bytes.Replace(legacyFile("hello"), []byte("hello"), []byte("hellO"), 1),
	} {
		if body, err := f.Decode(data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Decode = %q, %v; want ErrCorrupt", name, body, err)
		}
	}
}

// FuzzDecode: Decode never panics, fails only with ErrCorrupt, and what it
// accepts encodes to a file that decodes to the same body.
func FuzzDecode(f *testing.F) {
	f.Add(testFormat.Encode([]byte("{}")))
	f.Add(legacyFile("{}"))
	f.Add([]byte("nodeplane-test-state 3 0 00000000\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []Format{testFormat, {Magic: testFormat.Magic, Version: 3, Legacy: true}} {
			body, err := format.Decode(data)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("error does not wrap ErrCorrupt: %v", err)
				}
				continue
			}
			again, err := format.Decode(format.Encode(body))
			if err != nil || !bytes.Equal(again, body) {
				t.Fatalf("re-encoded body %q decodes to %q, %v", body, again, err)
			}
		}
	})
}
