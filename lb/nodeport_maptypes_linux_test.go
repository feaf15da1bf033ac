package lb

import (
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/nodeplane/nodeplane/internal/nat"
)

// TestNorthSouthLayoutMatchesBTF checks the Go twins of nodeport.c's
// structs against the compiled object: size, and offset and size of every
// member that is not padding; and the maps' key and value sizes.
func TestNorthSouthLayoutMatchesBTF(t *testing.T) {
	spec, err := loadNodeport()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		c      string
		goType any
	}{
		{"np_fe_key", npFeKey{}},
		{"np_fe", npFe{}},
		{"np_be", npBe{}},
		{"np_tuple", npTuple{}},
		{"np_rev", npRev{}},
		{"np_nat_key", nat.Key{}},
		{"np_nat_entry", nat.Entry{}},
		{"np_aff_key", npAffKey{}},
		{"np_aff_val", npAffVal{}},
		{"np_aff_match", npAffMatch{}},
	} {
		t.Run(s.c, func(t *testing.T) {
			var cs *btf.Struct
			if err := spec.Types.TypeByName(s.c, &cs); err != nil {
				t.Fatal(err)
			}
			gt := reflect.TypeOf(s.goType)
			if uint32(gt.Size()) != cs.Size {
				t.Fatalf("size: Go %d, C %d", gt.Size(), cs.Size)
			}
			var fields []reflect.StructField
			for i := range gt.NumField() {
				if f := gt.Field(i); f.Name != "_" {
					fields = append(fields, f)
				}
			}
			var members []btf.Member
			for _, m := range cs.Members {
				if !strings.HasPrefix(m.Name, "pad") {
					members = append(members, m)
				}
			}
			if len(fields) != len(members) {
				t.Fatalf("Go has %d fields, C %d members", len(fields), len(members))
			}
			for i, m := range members {
				f := fields[i]
				size, err := btf.Sizeof(m.Type)
				if err != nil {
					t.Fatal(err)
				}
				if uint32(f.Offset)*8 != uint32(m.Offset) || int(f.Type.Size()) != size {
					t.Errorf("member %q at bit %d, %d bytes; Go %s at byte %d, %d bytes", m.Name, m.Offset, size, f.Name, f.Offset, f.Type.Size())
				}
			}
		})
	}
	for _, m := range []struct {
		name       string
		key, value any
	}{
		{"np_np_fe", npFeKey{}, npFe{}},
		{"np_np_vip", npFeKey{}, uint32(0)},
		{"np_np_be", uint32(0), npBe{}},
		{"np_np_rev", npTuple{}, npRev{}},
		{"np_nat", nat.Key{}, nat.Entry{}},
		{"np_np_aff", npAffKey{}, npAffVal{}},
		{"np_np_aff_match", npAffMatch{}, uint8(0)},
	} {
		ms := spec.Maps[m.name]
		if ms == nil {
			t.Fatalf("no map %s", m.name)
		}
		if k, v := reflect.TypeOf(m.key).Size(), reflect.TypeOf(m.value).Size(); uint32(k) != ms.KeySize || uint32(v) != ms.ValueSize {
			t.Errorf("%s: Go key %d value %d, C key %d value %d", m.name, k, v, ms.KeySize, ms.ValueSize)
		}
	}
}
