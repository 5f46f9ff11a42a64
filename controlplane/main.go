// Command controlplane runs a local Kubernetes control plane for tests,
// demos and benchmarks: embedded etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler, all on 127.0.0.1, built from
// the Kubernetes Go modules pinned in go.mod (the way envtest does it for Go
// operators). Nodes come from elsewhere: KWOK or a real kubelet (see
// docs/controlplane.md).
//
// Usage:
//
//	controlplane run --data-dir DIR [--apiserver-port N] [--etcd-port N]
//	                 [--cluster-cidr CIDR] [--node-cidr-mask-size N] [--audit-policy FILE]
//	controlplane apiserver [kube-apiserver flags]          (started by run)
//	controlplane controller-manager [kube-controller-manager flags] (started by run)
//	controlplane scheduler [kube-scheduler flags]          (started by run)
//	controlplane version
//
// `run` starts etcd in this process and re-executes this binary for the
// apiserver, the controller-manager and the scheduler (one process each: they
// register global metrics, so they cannot share a process). It writes an admin
// kubeconfig into the data directory, prints its path and then "ready" once
// /readyz answers and the controller-manager has made the default
// ServiceAccount. SIGTERM or SIGINT stops the children, then etcd. With
// --audit-policy, the apiserver writes the audit events that policy selects to
// <data-dir>/logs/audit.log (JSON lines; the chart's RBAC test reads which calls
// the operator made).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // CronJob time zones, as in cmd/kube-controller-manager

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/version"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanagerapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// controllers are the kube-controller-manager controllers the tests rely on.
var controllers = []string{
	"job-controller",
	"cronjob-controller",
	"ttl-after-finished-controller",
	"garbage-collector-controller",
	"namespace-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
	"clusterrole-aggregation-controller",
	"replicaset-controller",
	"deployment-controller",
	"statefulset-controller",
	"endpointslice-controller",
	"resourcequota-controller",
	"disruption-controller",
	// Nodes: node-lifecycle takes the node.kubernetes.io/not-ready taint
	// (added by the TaintNodesByCondition admission plugin) off a Ready node
	// and marks a silent one NotReady; node-ipam gives each node a podCIDR
	// from --cluster-cidr; pod-garbage-collector deletes the pods of a node
	// that is gone.
	"node-lifecycle-controller",
	"node-ipam-controller",
	"pod-garbage-collector-controller",
}

// clientQPS and clientBurst are the client rate limits of the
// controller-manager and the scheduler. At the default 20 QPS, creating 1,000
// pods through a Job or a Deployment takes 44 s; at these, under 5 s.
const (
	clientQPS   = "500"
	clientBurst = "1000"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "apiserver":
		cmd := apiserverapp.NewAPIServerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "controller-manager":
		cmd := controllermanagerapp.NewControllerManagerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "scheduler":
		cmd := schedulerapp.NewSchedulerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "run":
		if err := run(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
			os.Exit(1)
		}
	case "version":
		fmt.Println(version.Get().GitVersion)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: controlplane run --data-dir DIR [--apiserver-port N] [--etcd-port N]"+
		" [--cluster-cidr CIDR] [--node-cidr-mask-size N] [--audit-policy FILE] | version")
	os.Exit(2)
}

type plane struct {
	dataDir       string
	apiserverPort int
	etcdPort      int
	etcdPeerPort  int
	logDir        string
	pkiDir        string
	token         string
	kubeconfig    string
	clusterCIDR   string
	nodeMaskSize  int
	auditPolicy   string   // kube-apiserver --audit-policy-file; "" for no audit log
	lock          *os.File // flock on the data directory, held while running
	children      []*exec.Cmd
	exited        chan childExit
}

type childExit struct {
	name string
	err  error
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "directory for etcd data, certificates, logs and the kubeconfig (required)")
	apiPort := fs.Int("apiserver-port", 0, "kube-apiserver secure port on 127.0.0.1 (0: a free port)")
	etcdPort := fs.Int("etcd-port", 0, "etcd client port on 127.0.0.1 (0: a free port)")
	clusterCIDR := fs.String("cluster-cidr", "127.128.0.0/9",
		"pod addresses: node-ipam gives each node one subnet of it (the default puts KWOK pods on loopback addresses)")
	nodeMaskSize := fs.Int("node-cidr-mask-size", 16, "prefix length of each node's podCIDR")
	auditPolicy := fs.String("audit-policy", "",
		"kube-apiserver audit policy file; the events it selects go to <data-dir>/logs/audit.log (default: no audit)")
	readyTimeout := fs.Duration("ready-timeout", 90*time.Second, "how long to wait for the control plane to become ready")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	p := &plane{exited: make(chan childExit, 3), clusterCIDR: *clusterCIDR, nodeMaskSize: *nodeMaskSize}
	var err error
	if *auditPolicy != "" {
		if p.auditPolicy, err = filepath.Abs(*auditPolicy); err != nil {
			return err
		}
		if _, err := os.Stat(p.auditPolicy); err != nil {
			return fmt.Errorf("--audit-policy: %w", err)
		}
	}
	if err := checkClusterCIDR(p.clusterCIDR, p.nodeMaskSize); err != nil {
		return err
	}
	if p.dataDir, err = filepath.Abs(*dataDir); err != nil {
		return err
	}
	if err := p.prepareDataDir(); err != nil {
		return err
	}
	if p.apiserverPort, err = pickPort(*apiPort, "--apiserver-port"); err != nil {
		return err
	}
	if p.etcdPort, err = pickPort(*etcdPort, "--etcd-port"); err != nil {
		return err
	}
	if p.etcdPeerPort, err = pickPort(0, "etcd peer port"); err != nil {
		return err
	}
	if err := p.writePKI(); err != nil {
		return fmt.Errorf("certificates in %s: %w", p.pkiDir, err)
	}
	if err := p.writeKubeconfig(); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}

	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	start := time.Now()
	etcd, err := p.startEtcd()
	if err != nil {
		return err
	}
	defer func() {
		etcd.Close()
		logf("etcd stopped")
	}()
	defer p.stopChildren()

	if err := p.startChild("apiserver", p.apiserverArgs()); err != nil {
		return err
	}
	if err := p.startChild("controller-manager", p.controllerManagerArgs()); err != nil {
		return err
	}
	if err := p.startChild("scheduler", p.schedulerArgs()); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), *readyTimeout)
	defer cancel()
	readyErr := make(chan error, 1)
	go func() { readyErr <- p.waitReady(ctx) }()

	for {
		select {
		case err := <-readyErr:
			if err != nil {
				return fmt.Errorf("control plane not ready after %s: %w (logs in %s)", *readyTimeout, err, p.logDir)
			}
			fmt.Printf("kubeconfig: %s\n", p.kubeconfig)
			fmt.Printf("apiserver: https://127.0.0.1:%d\n", p.apiserverPort)
			fmt.Printf("ready in %.1fs\n", time.Since(start).Seconds())
			fmt.Println("ready")
		case sig := <-signals:
			logf("received %s, stopping", sig)
			return nil
		case ex := <-p.exited:
			tail := tailFile(filepath.Join(p.logDir, ex.name+".log"), 20)
			return fmt.Errorf("%s exited unexpectedly (%v); last lines of %s:\n%s", ex.name, ex.err, filepath.Join(p.logDir, ex.name+".log"), tail)
		case err := <-etcd.Err():
			return fmt.Errorf("etcd failed: %w", err)
		}
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "controlplane: "+format+"\n", args...)
}

// prepareDataDir creates the data directory, checks it is writable and takes
// an exclusive lock, so that two control planes never share one directory.
func (p *plane) prepareDataDir() error {
	if err := os.MkdirAll(p.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory %s is unusable: %w", p.dataDir, err)
	}
	probe, err := os.CreateTemp(p.dataDir, ".write-probe-*")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", p.dataDir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	lock, err := os.OpenFile(filepath.Join(p.dataDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("data directory %s: %w", p.dataDir, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return fmt.Errorf("data directory %s is in use by another control plane (lock %s: %v)", p.dataDir, lock.Name(), err)
	}
	// Kept in p so the garbage collector never closes it (which would drop the lock).
	p.lock = lock
	p.logDir = filepath.Join(p.dataDir, "logs")
	p.pkiDir = filepath.Join(p.dataDir, "pki")
	for _, d := range []string{p.logDir, p.pkiDir, filepath.Join(p.dataDir, "etcd")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("data directory %s is unusable: %w", p.dataDir, err)
		}
	}
	p.kubeconfig = filepath.Join(p.dataDir, "kubeconfig")
	return nil
}

// pickPort returns the requested port after checking that 127.0.0.1 can bind
// it, or a free port when zero is requested.
func pickPort(port int, what string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return 0, fmt.Errorf("%s: cannot listen on 127.0.0.1:%d: %w", what, port, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (p *plane) pki(name string) string { return filepath.Join(p.pkiDir, name) }

// writePKI generates the CA, the apiserver serving certificate, the
// service-account signing key and the admin token, reusing those already in
// the data directory so that tokens stay valid across restarts.
func (p *plane) writePKI() error {
	if !exists(p.pki("ca.crt")) || !exists(p.pki("ca.key")) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial(),
			Subject:               pkix.Name{CommonName: "trainguard-controlplane-ca"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().AddDate(10, 0, 0),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return err
		}
		if err := writePEM(p.pki("ca.crt"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writeECKey(p.pki("ca.key"), key); err != nil {
			return err
		}
		os.Remove(p.pki("apiserver.crt")) // re-issue under the new CA
	}
	caPair, err := tls.LoadX509KeyPair(p.pki("ca.crt"), p.pki("ca.key"))
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caPair.Certificate[0])
	if err != nil {
		return err
	}
	if !exists(p.pki("apiserver.crt")) || !exists(p.pki("apiserver.key")) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: "kube-apiserver"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().AddDate(10, 0, 0),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc.cluster.local"},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caPair.PrivateKey)
		if err != nil {
			return err
		}
		if err := writePEM(p.pki("apiserver.crt"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writeECKey(p.pki("apiserver.key"), key); err != nil {
			return err
		}
	}
	if !exists(p.pki("sa.key")) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		if err := writePEM(p.pki("sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)); err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return err
		}
		if err := writePEM(p.pki("sa.pub"), "PUBLIC KEY", pub); err != nil {
			return err
		}
	}
	if !exists(p.pki("admin.token")) {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		if err := os.WriteFile(p.pki("admin.token"), []byte(hex.EncodeToString(b)), 0o600); err != nil {
			return err
		}
	}
	tok, err := os.ReadFile(p.pki("admin.token"))
	if err != nil {
		return err
	}
	p.token = strings.TrimSpace(string(tok))
	// token,user,uid,"groups": the admin is in system:masters, which RBAC's
	// bootstrap policy binds to cluster-admin.
	line := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", p.token)
	return os.WriteFile(p.pki("tokens.csv"), []byte(line), 0o600)
}

func (p *plane) writeKubeconfig() error {
	ca, err := os.ReadFile(p.pki("ca.crt"))
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: trainguard
  cluster:
    server: https://127.0.0.1:%d
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: trainguard
  context:
    cluster: trainguard
    user: admin
    namespace: default
current-context: trainguard
`, p.apiserverPort, base64.StdEncoding.EncodeToString(ca), p.token)
	tmp := p.kubeconfig + ".tmp"
	if err := os.WriteFile(tmp, []byte(cfg), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.kubeconfig)
}

func (p *plane) startEtcd() (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "trainguard"
	cfg.Dir = filepath.Join(p.dataDir, "etcd")
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.etcdPort))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.etcdPeerPort))}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(p.logDir, "etcd.log")}
	// A throwaway test cluster: durability is not worth the fsync latency.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd on 127.0.0.1:%d (data %s): %w", p.etcdPort, cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd not ready after 30s (log %s)", filepath.Join(p.logDir, "etcd.log"))
	}
}

func (p *plane) apiserverArgs() []string {
	args := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", p.apiserverPort),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", p.etcdPort),
		"--tls-cert-file=" + p.pki("apiserver.crt"),
		"--tls-private-key-file=" + p.pki("apiserver.key"),
		"--client-ca-file=" + p.pki("ca.crt"),
		"--token-auth-file=" + p.pki("tokens.csv"),
		"--authorization-mode=RBAC",
		"--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds," +
			"Priority,PodSecurity,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook," +
			"ValidatingAdmissionPolicy",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.pki("sa.pub"),
		"--service-account-signing-key-file=" + p.pki("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		// The apiserver is on 127.0.0.1, which no pod can reach: no endpoint
		// for the kubernetes Service.
		"--endpoint-reconciler-type=none",
		// kubectl exec/logs dial the node by its InternalIP: never look its
		// name up in DNS (the default tries Hostname first).
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
	if p.auditPolicy != "" {
		// Blocking mode: each event is written before the request returns, so
		// that a test reads every call made so far.
		args = append(args,
			"--audit-policy-file="+p.auditPolicy,
			"--audit-log-path="+filepath.Join(p.logDir, "audit.log"),
			"--audit-log-format=json",
			"--audit-log-mode=blocking",
			"--audit-log-maxbackup=0",
		)
	}
	return args
}

func (p *plane) controllerManagerArgs() []string {
	return []string{
		"--kubeconfig=" + p.kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--controllers=" + strings.Join(controllers, ","),
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.pki("sa.key"),
		"--root-ca-file=" + p.pki("ca.crt"),
		"--concurrent-gc-syncs=5",
		"--kube-api-qps=" + clientQPS,
		"--kube-api-burst=" + clientBurst,
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + p.clusterCIDR,
		fmt.Sprintf("--node-cidr-mask-size=%d", p.nodeMaskSize),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--profiling=false",
		"--v=1",
	}
}

func (p *plane) schedulerArgs() []string {
	return []string{
		"--kubeconfig=" + p.kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--kube-api-qps=" + clientQPS,
		"--kube-api-burst=" + clientBurst,
		"--profiling=false",
		"--v=1",
	}
}

// checkClusterCIDR refuses a pod range that is not an IPv4 network with room
// for at least one node subnet, before anything starts.
func checkClusterCIDR(cidr string, mask int) error {
	ip, network, err := net.ParseCIDR(cidr)
	if err != nil || ip.To4() == nil {
		return fmt.Errorf("--cluster-cidr %q: not an IPv4 network (want e.g. 10.244.0.0/16)", cidr)
	}
	if !ip.Equal(network.IP) {
		return fmt.Errorf("--cluster-cidr %q: host bits set (the network is %s)", cidr, network)
	}
	ones, _ := network.Mask.Size()
	if mask < ones || mask > 30 {
		return fmt.Errorf("--node-cidr-mask-size %d: must be between the cluster prefix /%d and /30", mask, ones)
	}
	return nil
}

// startChild re-executes this binary as one control-plane component. The
// child gets SIGKILL if this process dies without stopping it, so no
// component outlives the control plane.
func (p *plane) startChild(name string, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(p.logDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p.children = append(p.children, cmd)
	go func() {
		err := cmd.Wait()
		logFile.Close()
		p.exited <- childExit{name: name, err: err}
	}()
	return nil
}

// stopChildren sends SIGTERM to every child in reverse start order and waits
// for it, killing it after a grace period.
func (p *plane) stopChildren() {
	for i := len(p.children) - 1; i >= 0; i-- {
		c := p.children[i]
		if c.ProcessState != nil {
			continue
		}
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(15 * time.Second)
	for pending := p.running(); pending > 0; pending-- {
		select {
		case ex := <-p.exited:
			logf("%s stopped", ex.name)
		case <-deadline:
			for _, c := range p.children {
				_ = c.Process.Kill()
			}
			logf("killed children after 15s")
			return
		}
	}
}

func (p *plane) running() int {
	n := 0
	for _, c := range p.children {
		if c.ProcessState == nil {
			n++
		}
	}
	return n
}

// waitReady polls /readyz, then waits for the default ServiceAccount, which
// proves that the controller-manager is up and reconciling.
func (p *plane) waitReady(ctx context.Context) error {
	ca, err := os.ReadFile(p.pki("ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	base := fmt.Sprintf("https://127.0.0.1:%d", p.apiserverPort)
	last := "no answer yet"
	for _, path := range []string{"/readyz", "/api/v1/namespaces/default/serviceaccounts/default"} {
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
			req.Header.Set("Authorization", "Bearer "+p.token)
			resp, err := client.Do(req)
			if err == nil {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				last = fmt.Sprintf("GET %s: %d %s", path, resp.StatusCode, strings.TrimSpace(string(body)))
			} else {
				last = fmt.Sprintf("GET %s: %v", path, err)
			}
			select {
			case <-ctx.Done():
				return errors.New(last)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

func writeECKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}

func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
