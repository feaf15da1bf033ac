package lb

import (
	"reflect"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestMapLayoutMatchesBTF checks every Go twin in maptypes.go against the
// struct of the same role in the compiled object: size, and offset and size
// of each member in order. It also checks that each map's key and value
// sizes are those of the Go types the loader uses with it.
func TestMapLayoutMatchesBTF(t *testing.T) {
	spec, err := loadSock()
	if err != nil {
		t.Fatal(err)
	}
	structs := []struct {
		c      string
		goType any
	}{
		{"lb4_key", lb4Key{}},
		{"lb6_key", lb6Key{}},
		{"lb_service", lbService{}},
		{"lb4_backend", lb4Backend{}},
		{"lb6_backend", lb6Backend{}},
		{"lb4_reverse_nat", lb4ReverseNAT{}},
		{"lb6_reverse_nat", lb6ReverseNAT{}},
		{"lb4_sock_revnat_key", lb4SockRevNATKey{}},
		{"lb4_sock_revnat", lb4SockRevNAT{}},
		{"lb6_sock_revnat_key", lb6SockRevNATKey{}},
		{"lb6_sock_revnat", lb6SockRevNAT{}},
		{"lb4_affinity_key", lb4AffinityKey{}},
		{"lb6_affinity_key", lb6AffinityKey{}},
		{"lb_affinity_val", lbAffinityVal{}},
		{"lb_affinity_match", lbAffinityMatch{}},
		{"lb_host_addr", lbHostAddr{}},
	}
	for _, s := range structs {
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
			if len(fields) != len(cs.Members) {
				t.Fatalf("Go has %d fields, C %d members", len(fields), len(cs.Members))
			}
			for i, m := range cs.Members {
				f := fields[i]
				size, err := btf.Sizeof(m.Type)
				if err != nil {
					t.Fatal(err)
				}
				if uint32(f.Offset)*8 != uint32(m.Offset) || int(f.Type.Size()) != size {
					t.Errorf("member %d: C %q at bit %d, %d bytes; Go %s at byte %d, %d bytes",
						i, m.Name, m.Offset, size, f.Name, f.Offset, f.Type.Size())
				}
			}
		})
	}

	maps := []struct {
		name       string
		key, value any
	}{
		{"np_lb4_svc", lb4Key{}, lbService{}},
		{"np_lb6_svc", lb6Key{}, lbService{}},
		{"np_lb4_be", uint32(0), lb4Backend{}},
		{"np_lb6_be", uint32(0), lb6Backend{}},
		{"np_lb4_revnat", uint16(0), lb4ReverseNAT{}},
		{"np_lb6_revnat", uint16(0), lb6ReverseNAT{}},
		{"np_lb4_sk_rnat", lb4SockRevNATKey{}, lb4SockRevNAT{}},
		{"np_lb6_sk_rnat", lb6SockRevNATKey{}, lb6SockRevNAT{}},
		{"np_lb4_aff", lb4AffinityKey{}, lbAffinityVal{}},
		{"np_lb6_aff", lb6AffinityKey{}, lbAffinityVal{}},
		{"np_lb_aff_match", lbAffinityMatch{}, uint8(0)},
		{"np_lb_maglev", uint16(0), uint32(0)},
		{"np_lb_host_addr", lbHostAddr{}, uint8(0)},
	}
	if len(maps) != len(spec.Maps) {
		t.Errorf("object has %d maps, test knows %d", len(spec.Maps), len(maps))
	}
	for _, m := range maps {
		ms := spec.Maps[m.name]
		if ms == nil {
			t.Errorf("map %s missing", m.name)
			continue
		}
		if k, v := reflect.TypeOf(m.key).Size(), reflect.TypeOf(m.value).Size(); uint32(k) != ms.KeySize || uint32(v) != ms.ValueSize {
			t.Errorf("map %s: key/value %d/%d bytes, Go %d/%d", m.name, ms.KeySize, ms.ValueSize, k, v)
		}
	}
	if in := spec.Maps["np_lb_maglev"].InnerMap; in == nil || in.ValueSize != 4*defaultMaglevTableSize || in.MaxEntries != 1 {
		t.Errorf("Maglev inner map template: %+v", in)
	}
}
