package etcdnodes

import (
	"encoding/json"
	"testing"
)

// FuzzDecode: a node's etcd value, whatever it holds, decodes to an
// error or to a canonical node that encodes and decodes to itself.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("node-a"), []byte(`{"addresses":["192.168.0.1"],"podCIDRs":["10.1.0.0/24"]}`))
	f.Add([]byte("node-b"), []byte(`{"addresses":["fd00::2","192.168.0.2"],"podCIDRs":["fd01::/64","10.1.1.0/24"],"hostAddresses":["10.1.1.1","fd01::1"]}`))
	f.Add([]byte("node-c"), []byte(`{"addresses":["192.168.0.3"],"podCIDRs":["10.1.2.0/24"],"hostAddresses":["10.9.0.1"]}`))
	f.Add([]byte("bad/name"), []byte(`{}`))
	const prefix = "/p/nodes/"
	f.Fuzz(func(t *testing.T, name, value []byte) {
		key := append([]byte(prefix), name...)
		n, err := decode(prefix, key, value)
		if err != nil {
			return
		}
		again, err := json.Marshal(stored{n.Addresses, n.PodCIDRs, n.HostAddresses})
		if err != nil {
			t.Fatal(err)
		}
		m, err := decode(prefix, key, again)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", again, err)
		}
		if !m.Equal(n) {
			t.Fatalf("round trip %+v -> %+v", n, m)
		}
	})
}
