// Package maglevgolden reads the Maglev tables Cilium's pkg/maglev
// computed (lb/maglev/testdata/cilium_tables.json.gz; its README says how
// the file was made), for the tests that compare nodeplane's tables with
// Cilium's: lb/maglev's builder and examples/l4lb's maglev-table command.
package maglevgolden

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

// Case is one table Cilium computed, with its input.
type Case struct {
	Name      string    `json:"name"`
	TableSize uint      `json:"tableSize"`
	HashSeed  string    `json:"hashSeed"`
	Backends  []Backend `json:"backends"`
	SHA256    string    `json:"sha256"`
	Table     []uint32  `json:"table"`
}

// Backend is one backend of a Case: an address "ADDR:PORT" (IPv6 in
// brackets), Cilium's protocol name (TCP, UDP, SCTP, ANY), its weight and
// the ID the table holds for it.
type Backend struct {
	Addr   string `json:"addr"`
	Proto  string `json:"proto"`
	Weight uint16 `json:"weight"`
	ID     uint32 `json:"id"`
}

// Load reads the golden file at path and fails tb unless it holds at least
// 200 cases.
func Load(tb testing.TB, path string) []Case {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		tb.Fatal(err)
	}
	var golden struct {
		Source string `json:"source"`
		Cases  []Case `json:"cases"`
	}
	if err := json.NewDecoder(zr).Decode(&golden); err != nil {
		tb.Fatal(err)
	}
	if len(golden.Cases) < 200 {
		tb.Fatalf("only %d golden cases", len(golden.Cases))
	}
	return golden.Cases
}

// Digest is the SHA-256 of a table's IDs as little-endian uint32s, the
// form Case.SHA256 has.
func Digest(table []uint32) string {
	buf := make([]byte, 4*len(table))
	for i, id := range table {
		binary.LittleEndian.PutUint32(buf[4*i:], id)
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:])
}
