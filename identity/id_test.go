package identity

import (
	"errors"
	"fmt"
	"testing"
)

func TestIDLayout(t *testing.T) {
	id, err := ClusterScopedID(1, 256)
	if err != nil {
		t.Fatal(err)
	}
	if id != 65792 || id.Scope() != ScopeCluster || id.ClusterID() != 1 || id.Index() != 256 {
		t.Errorf("ClusterScopedID(1, 256) = %#v scope %v cluster %d index %d", id, id.Scope(), id.ClusterID(), id.Index())
	}
	if v, ok := id.Wire(); !ok || v != 65792 || ID(v) != id {
		t.Errorf("Wire() = %d, %v", v, ok)
	}
	top, _ := ClusterScopedID(255, 65535)
	if top != MaxWireID || top.Validate() != nil {
		t.Errorf("top cluster ID = %d, %v", top, top.Validate())
	}

	local, err := LocalScopedID(1)
	if err != nil {
		t.Fatal(err)
	}
	if local != 1<<24|1 || !local.IsLocal() || local.IsCluster() || local.ClusterID() != 0 || local.Index() != 1 {
		t.Errorf("LocalScopedID(1) = %#v", local)
	}
	if _, ok := local.Wire(); ok {
		t.Error("a local ID must not go on the wire")
	}
	if ID(uint32(local))&MaxWireID != 1 {
		t.Error("MaxWireID keeps more than the 24 bits of a packet")
	}

	for _, tc := range []struct {
		id    ID
		scope Scope
		valid bool
	}{
		{0, ScopeUnknown, false},
		{ReservedHost, ScopeReserved, true},
		{ReservedWorldIPv6, ScopeReserved, true},
		{11, ScopeReserved, false},
		{255, ScopeReserved, false},
		{256, ScopeCluster, false}, // cluster 0
		{1000, ScopeCluster, false},
		{65535, ScopeCluster, false},
		{65536, ScopeInvalid, false}, // cluster 1, index 0
		{65536 + 255, ScopeInvalid, false},
		{65536 + 256, ScopeCluster, true},
		{1 << 24, ScopeInvalid, false},
		{1<<24 | 1, ScopeLocal, true},
		{1<<25 - 1, ScopeLocal, true},
		{1 << 25, ScopeInvalid, false},
		{1<<24 | 1<<25, ScopeInvalid, false},
		{0xFFFFFFFF, ScopeInvalid, false},
	} {
		if got := tc.id.Scope(); got != tc.scope {
			t.Errorf("ID(%d).Scope() = %v, want %v", tc.id, got, tc.scope)
		}
		err := tc.id.Validate()
		if (err == nil) != tc.valid || (err != nil && !errors.Is(err, ErrInvalidID)) {
			t.Errorf("ID(%d).Validate() = %v, want valid=%v", tc.id, err, tc.valid)
		}
	}

	for _, tc := range []struct {
		cluster uint8
		index   uint16
	}{{0, 256}, {1, 0}, {1, 255}} {
		if _, err := ClusterScopedID(tc.cluster, tc.index); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ClusterScopedID(%d, %d) = %v", tc.cluster, tc.index, err)
		}
	}
	for _, index := range []uint32{0, 1 << 24} {
		if _, err := LocalScopedID(index); !errors.Is(err, ErrInvalidID) {
			t.Errorf("LocalScopedID(%d) = %v", index, err)
		}
	}
}

func TestParseID(t *testing.T) {
	for in, want := range map[string]ID{"0": 0, "1": 1, "65792": 65792, "16777217": 1<<24 | 1} {
		got, err := ParseID(in)
		if err != nil || got != want {
			t.Errorf("ParseID(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "-1", "x", "0x10", "4294967296", "11", "1000", "33554432"} {
		if _, err := ParseID(in); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ParseID(%q) = %v, want ErrInvalidID", in, err)
		}
	}
}

func TestIDFormatting(t *testing.T) {
	for id, want := range map[ID]string{
		Unknown:       "identity.Unknown",
		ReservedHost:  "identity.ID(1 /* reserved:host */)",
		100:           "identity.ID(100 /* reserved range */)",
		65792:         "identity.ID(65792 /* cluster 1 index 256 */)",
		1<<24 | 5:     "identity.ID(16777221 /* local 5 */)",
		0xFFFFFFFF:    "identity.ID(4294967295 /* invalid */)",
		ReservedWorld: "identity.ID(2 /* reserved:world */)",
	} {
		if got := fmt.Sprintf("%#v", id); got != want {
			t.Errorf("%%#v of %d = %q, want %q", uint32(id), got, want)
		}
	}
	if got := fmt.Sprint(ID(65792)); got != "65792" {
		t.Errorf("String() = %q", got)
	}
	name, ok := ReservedKubeAPIServer.ReservedName()
	if !ok || name != "kube-apiserver" {
		t.Errorf("ReservedName = %q %v", name, ok)
	}
	if _, ok := ID(300).ReservedName(); ok {
		t.Error("300 is not reserved")
	}
	host, _ := ReservedHost.ReservedLabels()
	if got := (Identity{ReservedHost, host}).String(); got != "1 (reserved:host)" {
		t.Errorf("Identity.String() = %q", got)
	}
}
