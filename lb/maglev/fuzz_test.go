package maglev

import (
	"encoding/base64"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
)

// decodeBackends turns fuzzer bytes into a pool: per backend a key length
// (0–15), the key, a 16-bit weight and an 8-bit ID, so that keys and IDs
// collide often.
func decodeBackends(data []byte) []Backend {
	var out []Backend
	for len(data) >= 4 && len(out) < 300 {
		n := int(data[0] % 16)
		data = data[1:]
		if len(data) < n+3 {
			break
		}
		out = append(out, Backend{
			Key:    string(data[:n]),
			Weight: uint16(data[n]) | uint16(data[n+1])<<8,
			ID:     uint32(data[n+2]),
		})
		data = data[n+3:]
	}
	return out
}

// FuzzTable: for any pool, every way of filling gives the reference table,
// every entry names a backend of the pool, and the result is deterministic.
func FuzzTable(f *testing.F) {
	f.Add([]byte("\x01a\x01\x00\x01\x01b\x01\x00\x02"), uint8(0))
	f.Add([]byte("\x03abc\xff\xff\x01\x03abd\x01\x00\x02\x03abe\x01\x00\x03\x03abc\x05\x00\x09"), uint8(1))
	f.Add([]byte("\x00\x00\x00\x07\x00\x00\x00\x08"), uint8(2))
	f.Add(slices.Repeat([]byte("\x02xy\x02\x00\x01"), 50), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, size uint8) {
		m := []uint{251, 509, 1021, 2039}[size%4]
		backends := decodeBackends(data)
		builders := make([]*Builder, len(pacings))
		for i, p := range pacings {
			builders[i] = newPaced(t, Config{TableSize: m}, p.budget)
		}
		if len(backends) == 0 {
			if _, err := builders[0].Table(backends); !errors.Is(err, ErrNoBackends) {
				t.Fatalf("empty pool: %v", err)
			}
			return
		}
		ids := map[uint32]bool{}
		for _, be := range backends {
			ids[be.ID] = true
		}
		want := referenceTable(uint64(m), builders[0].seed, backends)
		for i, b := range builders {
			got, err := b.Table(backends)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("pacing %s: table differs from the reference", pacings[i].name)
			}
			again := make([]uint32, m)
			if err := b.Fill(again, backends); err != nil || !slices.Equal(again, got) {
				t.Fatalf("pacing %s: Fill after Table differs (%v)", pacings[i].name, err)
			}
		}
		for i, id := range want {
			if !ids[id] {
				t.Fatalf("entry %d holds %d, not a backend of the pool", i, id)
			}
		}
	})
}

// FuzzConfig: New accepts exactly the supported sizes and 12-byte base64
// seeds and names the problem otherwise.
func FuzzConfig(f *testing.F) {
	f.Add(uint(0), "")
	f.Add(uint(16381), DefaultHashSeed)
	f.Add(uint(16383), "AAAA")
	f.Add(uint(65521), "JLfvgnHc2kaSUFaI==")
	f.Fuzz(func(t *testing.T, size uint, seed string) {
		b, err := New(Config{TableSize: size, HashSeed: seed})
		if size == 0 {
			size = DefaultTableSize
		}
		if seed == "" {
			seed = DefaultHashSeed
		}
		decoded, decErr := base64.StdEncoding.DecodeString(seed)
		sizeOK := slices.Contains(SupportedTableSizes(), size)
		seedOK := decErr == nil && len(decoded) == 12
		switch {
		case !sizeOK:
			if !errors.Is(err, ErrTableSize) {
				t.Fatalf("size %d: error %v, want ErrTableSize", size, err)
			}
		case !seedOK:
			if !errors.Is(err, ErrHashSeed) {
				t.Fatalf("seed %q: error %v, want ErrHashSeed", seed, err)
			}
		case err != nil || b.TableSize() != int(size):
			t.Fatalf("New(%d, %q) = %v, %v", size, seed, b, err)
		}
	})
}

// FuzzBackendKey: keys are unique per address, port and protocol, since
// each can be parsed back.
func FuzzBackendKey(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, uint16(80), uint8(6))
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(53), uint8(17))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1}, uint16(0), uint8(132))
	f.Fuzz(func(t *testing.T, ip []byte, port uint16, proto uint8) {
		addr, ok := netip.AddrFromSlice(ip)
		ap := netip.AddrPortFrom(addr, port)
		key, err := BackendKey(ap, nodeplane.Protocol(proto))
		switch {
		case !ok:
			if !errors.Is(err, ErrInvalidAddress) {
				t.Fatalf("invalid address: %v", err)
			}
			return
		case proto != 0 && proto != 6 && proto != 17 && proto != 132:
			if !errors.Is(err, ErrUnsupportedProtocol) {
				t.Fatalf("protocol %d: %v", proto, err)
			}
			return
		case err != nil:
			t.Fatal(err)
		}
		inner, ok := strings.CutPrefix(key, "[")
		inner, ok2 := strings.CutSuffix(inner, ",State:active]")
		slash := strings.LastIndexByte(inner, '/')
		if !ok || !ok2 || slash < 0 {
			t.Fatalf("key %q is not [addr:port/proto,State:active]", key)
		}
		back, err := netip.ParseAddrPort(inner[:slash])
		if err != nil || back != ap || inner[slash+1:] != mustKeyProtocol(nodeplane.Protocol(proto)) {
			t.Fatalf("key %q does not give back %v/%v (%v)", key, ap, nodeplane.Protocol(proto), err)
		}
	})
}

func mustKeyProtocol(p nodeplane.Protocol) string {
	name, _ := keyProtocol(p)
	return name
}
