package datapath

import (
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestMapLayouts checks every Go mirror of a C struct against the BTF of
// the compiled object: the same size, and every field at its member's
// offset, recursively. Fields are matched by their `btf` tags; every C
// member must have a Go field.
func TestMapLayouts(t *testing.T) {
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c      string
		goType any
	}{
		{"np_endpoint_key", endpointKey{}},
		{"np_endpoint_info", endpointInfo{}},
		{"np_ipcache_key", ipcacheKey{}},
		{"np_ipcache_info", ipcacheInfo{}},
		{"np_tuple", tuple{}},
		{"np_ct_entry", ctEntry{}},
		{"np_frag_key", fragKey{}},
		{"np_frag_l4", fragL4{}},
		{"np_policy_key", policyKey{}},
		{"np_policy_entry", policyEntry{}},
		{"np_counter", counter{}},
		{"np_event_hdr", eventHeader{}},
		{"np_drop_event", dropEvent{}},
		{"np_policy_verdict_event", policyVerdictEvent{}},
		{"np_trace_event", traceEvent{}},
		{"np_trace_config", traceConfig{}},
		{"np_edt_info", edtInfo{}},
		{"np_overlay_config", overlayConfig{}},
		{"np_nat_config", natConfig{}},
		{"np_nat_key", natKey{}},
		{"np_nat_entry", natEntry{}},
		{"np_nat_exclude_key", natExcludeKey{}},
		{"__sk_buff", skbContext{}},
	} {
		t.Run(tc.c, func(t *testing.T) {
			var s *btf.Struct
			if err := spec.Types.TypeByName(tc.c, &s); err != nil {
				t.Fatal(err)
			}
			// The Go mirror of __sk_buff covers only cb by name.
			checkLayout(t, s, reflect.TypeOf(tc.goType), tc.c == "__sk_buff")
		})
	}

	// The maps use these types for their keys and values.
	for name, kv := range map[string][2]string{
		datapathMapNpEndpoints:     {"np_endpoint_key", "np_endpoint_info"},
		datapathMapNpIpcache:       {"np_ipcache_key", "np_ipcache_info"},
		datapathMapNpConntrack:     {"np_tuple", "np_ct_entry"},
		datapathMapNpFrags:         {"np_frag_key", "np_frag_l4"},
		datapathMapNpCounters:      {"", "np_counter"},
		datapathMapNpTraceConfig:   {"", "np_trace_config"},
		datapathMapNpEdt:           {"", "np_edt_info"},
		datapathMapNpOverlayConfig: {"", "np_overlay_config"},
		datapathMapNpNat:           {"np_nat_key", "np_nat_entry"},
		datapathMapNpNatConfig:     {"", "np_nat_config"},
	} {
		m := spec.Maps[name]
		if kv[0] != "" && m.Key.TypeName() != kv[0] {
			t.Errorf("map %s: key %s, want %s", name, m.Key.TypeName(), kv[0])
		}
		if m.Value.TypeName() != kv[1] {
			t.Errorf("map %s: value %s, want %s", name, m.Value.TypeName(), kv[1])
		}
	}
	inner := spec.Maps[datapathMapNpPolicy].InnerMap
	if inner.Key.TypeName() != "np_policy_key" || inner.Value.TypeName() != "np_policy_entry" {
		t.Errorf("policy inner map: %s -> %s", inner.Key.TypeName(), inner.Value.TypeName())
	}
}

func checkLayout(t *testing.T, s *btf.Struct, typ reflect.Type, partial bool) {
	t.Helper()
	if typ.Kind() != reflect.Struct {
		t.Fatalf("%s: Go type %s is not a struct", s.Name, typ)
	}
	if got := binary.Size(reflect.New(typ).Elem().Interface()); got != int(s.Size) {
		t.Errorf("%s: encoded size %d, C size %d", s.Name, got, s.Size)
	}
	if got := typ.Size(); got != uintptr(s.Size) {
		t.Errorf("%s: Go size %d (implicit padding?), C size %d", s.Name, got, s.Size)
	}
	fields := make(map[string]reflect.StructField)
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tag := f.Tag.Get("btf")
		if tag == "" {
			t.Errorf("%s: Go field %s has no btf tag", s.Name, f.Name)
			continue
		}
		fields[tag] = f
	}
	for _, m := range s.Members {
		f, ok := fields[m.Name]
		if !ok && partial {
			continue
		}
		if !ok {
			t.Errorf("%s: member %s has no Go field", s.Name, m.Name)
			continue
		}
		delete(fields, m.Name)
		if off := uintptr(m.Offset.Bytes()); f.Offset != off {
			t.Errorf("%s.%s: Go offset %d, C offset %d", s.Name, m.Name, f.Offset, off)
		}
		if inner, ok := btf.UnderlyingType(m.Type).(*btf.Struct); ok {
			checkLayout(t, inner, f.Type, false)
		}
	}
	for name := range fields {
		t.Errorf("%s: Go field tagged %s has no C member", s.Name, name)
	}
}
