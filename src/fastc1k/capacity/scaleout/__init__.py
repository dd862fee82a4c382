"""The scale-out proof: the same staged ramp against 1, 2, 4 ... fastc1k replicas behind
a real load balancer, each replica a "container" of its own.

    python -m fastc1k.capacity scaleout --replicas 1,2,4 --container cpus=0.25,memory=256M

Strategy. The replicas (fleet) listen in namespaces of their own behind HAProxy or nginx
(balancer), or behind nftables rules in a "node" namespace, as kube-proxy programs a
Service (kernel_lb; kservice is the face the run drives, health its readiness prober,
kcpu its CPU from perf samples).
The balancer is pinned to the last core, the replicas to the others. For each replica
count the capacity suite's own Runner drives the balancer's address (run); per stage the
balancer's CPU per request, and at the peak stage what bound the throughput (analysis).
Then a fault: one replica killed or frozen under steady load, the failed requests
counted and the health check timed. config holds the settings, report the outputs, cli
the arguments.

    fleet       replicas: cgroups, namespaces + veths, servers; privileges
    balancer    HAProxy / nginx: config, process, stats socket
    kernel_lb   nftables DNAT in a node namespace (kube-proxy's nftables mode); kservice,
                health, kcpu
    kscale      --balancer kernel,haproxy-http,haproxy-tcp: the balancers side by side behind
                one node namespace, the faults behind each, the README block
    config      ScaleoutConfig
    run         Deployment, Sampler, run_scaling, run_fault, run
    analysis    bound_of, analyse_fault, analyse
    report      summary_text, charts, write_reports
    cli         the `scaleout` subcommand
"""
from .analysis import analyse, analyse_fault, bound_of
from .cli import TOOL, main
from .config import ScaleoutConfig, describe_replica
from .fleet import NET_PREFIX, REPLICA_PORT, Fleet, Replica, ReplicaSpec, privileges, running
from .report import absorbed, summary_text, write_reports
from .run import run, run_fault, run_scaling

__all__ = ["TOOL", "main", "ScaleoutConfig", "describe_replica", "NET_PREFIX", "REPLICA_PORT", "Fleet", "Replica",
           "ReplicaSpec", "privileges", "running", "run", "run_fault", "run_scaling", "analyse", "analyse_fault",
           "bound_of", "absorbed", "summary_text", "write_reports"]
