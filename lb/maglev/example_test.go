package maglev_test

import (
	"fmt"
	"net/netip"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/lb/maglev"
)

// Build the lookup table of a service with three backends. Every node that
// builds it from the same backends, table size and seed gets the same
// table, and so does Cilium.
func Example() {
	builder, err := maglev.New(maglev.Config{TableSize: 251}) // Cilium's smallest size
	if err != nil {
		panic(err)
	}

	var backends []maglev.Backend
	for i, addr := range []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"} {
		key, err := maglev.BackendKey(netip.MustParseAddrPort(addr), nodeplane.ProtoTCP)
		if err != nil {
			panic(err)
		}
		backends = append(backends, maglev.Backend{Key: key, ID: uint32(i + 1), Weight: 1})
	}

	table, err := builder.Table(backends)
	if err != nil {
		panic(err)
	}
	fmt.Println(len(table), "entries:", table[:24], "…")

	count := map[uint32]int{}
	for _, id := range table {
		count[id]++
	}
	fmt.Println("entries per backend:", count)
	// Output:
	// 251 entries: [3 3 3 3 3 2 1 2 3 3 3 1 2 3 2 1 2 3 3 1 1 2 3 2] …
	// entries per backend: map[1:84 2:84 3:83]
}

// Weights: the second backend gets three times the share of the first.
// Removing the third hands its entries to the others and moves only a few
// (4 of 1021) between the two that stay.
func ExampleBuilder_Fill() {
	builder, err := maglev.New(maglev.Config{TableSize: 1021})
	if err != nil {
		panic(err)
	}
	backends := []maglev.Backend{
		{Key: "[10.0.0.1:80/TCP,State:active]", ID: 1, Weight: 100},
		{Key: "[10.0.0.2:80/TCP,State:active]", ID: 2, Weight: 300},
		{Key: "[10.0.0.3:80/TCP,State:active]", ID: 3, Weight: 100},
	}

	// Fill reuses the caller's table and allocates nothing.
	before := make([]uint32, builder.TableSize())
	if err := builder.Fill(before, backends); err != nil {
		panic(err)
	}
	after := make([]uint32, builder.TableSize())
	if err := builder.Fill(after, backends[:2]); err != nil {
		panic(err)
	}

	count := map[uint32]int{}
	moved := 0
	for i := range before {
		count[before[i]]++
		if before[i] != 3 && before[i] != after[i] {
			moved++
		}
	}
	fmt.Println("entries per backend:", count)
	fmt.Println("entries moved between backends 1 and 2:", moved)
	// Output:
	// entries per backend: map[1:205 2:612 3:204]
	// entries moved between backends 1 and 2: 4
}

func ExampleBackendKey() {
	for _, addr := range []string{"10.0.0.1:8080", "[fd00::1]:53"} {
		key, err := maglev.BackendKey(netip.MustParseAddrPort(addr), nodeplane.ProtoUDP)
		if err != nil {
			panic(err)
		}
		fmt.Println(key)
	}
	// Output:
	// [10.0.0.1:8080/UDP,State:active]
	// [[fd00::1]:53/UDP,State:active]
}
