package monitor_test

import (
	"fmt"

	"github.com/nodeplane/nodeplane/datapath/monitor"
)

func ExampleDropReason() {
	fmt.Println(monitor.DropPolicyDenied, uint8(monitor.DropPolicyDenied))
	fmt.Println(monitor.DropInvalidSourceIP, uint8(monitor.DropInvalidSourceIP))
	// Output:
	// POLICY_DENIED 133
	// INVALID_SOURCE_IP 132
}
