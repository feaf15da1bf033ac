package httpproxy_test

import (
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/proxy/httpproxy"
)

// New refuses a configuration it cannot run before binding anything.
func TestNewConfig(t *testing.T) {
	for name, cfg := range map[string]httpproxy.Config{
		"no port":                      {Policy: httpproxy.EnginePolicy{}},
		"no policy":                    {Port: 15001},
		"negative timeout":             {Port: 15001, Policy: httpproxy.EnginePolicy{}, IdleTimeout: -time.Second},
		"negative headers":             {Port: 15001, Policy: httpproxy.EnginePolicy{}, MaxHeaderBytes: -1},
		"negative stream idle timeout": {Port: 15001, Policy: httpproxy.EnginePolicy{}, StreamIdleTimeout: -time.Second},
		"negative connection limit":    {Port: 15001, Policy: httpproxy.EnginePolicy{}, MaxConnections: -1},
	} {
		if p, err := httpproxy.New(cfg); err == nil {
			p.Close()
			t.Errorf("%s: accepted", name)
		}
	}
}
