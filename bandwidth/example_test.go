package bandwidth_test

import (
	"fmt"

	"github.com/nodeplane/nodeplane/bandwidth"
)

func ExampleParseRate() {
	for _, s := range []string{"50M", "1Mi", "500k", "1.5G", "10K"} {
		r, err := bandwidth.ParseRate(s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%s = %d bit/s = %d byte/s\n", s, uint64(r), r.BytesPerSecond())
	}
	// Output:
	// 50M = 50000000 bit/s = 6250000 byte/s
	// 1Mi = 1048576 bit/s = 131072 byte/s
	// 500k = 500000 bit/s = 62500 byte/s
	// 1.5G = 1500000000 bit/s = 187500000 byte/s
	// invalid bandwidth "10K": unknown suffix "K" (kilo is lower-case k)
}

func ExampleParseAnnotations() {
	l, err := bandwidth.ParseAnnotations(map[string]string{
		"kubernetes.io/egress-bandwidth":  "10M",
		"kubernetes.io/ingress-bandwidth": "1G",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("egress", l.Egress, "ingress", l.Ingress)

	_, err = bandwidth.ParseAnnotations(map[string]string{"kubernetes.io/egress-bandwidth": "100"})
	fmt.Println(err)
	// Output:
	// egress 10M ingress 1G
	// annotation kubernetes.io/egress-bandwidth: invalid bandwidth "100": below the minimum of 1k bit/s
}
