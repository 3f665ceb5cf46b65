// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3 module pinned in
// ../go.mod. Debian ships etcd 3.4, which lacks the watch progress notifications that
// kube-apiserver's consistent reads from cache rely on, so the test control plane builds its own.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
