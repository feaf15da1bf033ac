//go:build !linux

package lb

var agentMain func() int

const clientAgentEnv = ""
