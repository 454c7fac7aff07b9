"""Submits a notification to Herald over mutual TLS, replays it with the same idempotency key,
and reads its status.

The gRPC stubs are generated from the repository's proto/ at start (grpcio-tools), into a
temporary directory: nothing generated is committed. See README.md.
"""

import argparse
import importlib
import os
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
import grpc_tools
from grpc_tools import protoc

REPOSITORY = Path(__file__).resolve().parents[2]


def load_stubs(proto_dir: Path):
    """Compiles herald/submit/v1 (and the common types it imports) and imports the modules."""
    with tempfile.TemporaryDirectory(prefix="herald-stubs-") as out_dir:
        generate_stubs(proto_dir, out_dir)
        sys.path.insert(0, out_dir)
        modules = [
            importlib.import_module(name)
            for name in (
                "herald.common.v1.common_pb2",
                "herald.submit.v1.submit_pb2",
                "herald.submit.v1.submit_pb2_grpc",
            )
        ]
        sys.path.remove(out_dir)
    return modules


def generate_stubs(proto_dir: Path, out_dir: str) -> None:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = ["herald/common/v1/common.proto", "herald/submit/v1/submit.proto"]
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {proto_dir} (exit {status})")


def arguments() -> argparse.Namespace:
    env = os.environ.get
    certs = REPOSITORY / "certs-dev" / "generated"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=env("HERALD_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--server-name", default=env("HERALD_SERVER_NAME", "localhost"))
    parser.add_argument("--ca", default=env("HERALD_CA", str(certs / "ca.pem")))
    parser.add_argument("--cert", default=env("HERALD_CERT", str(certs / "orders.pem")))
    parser.add_argument("--key", default=env("HERALD_KEY", str(certs / "orders.key")))
    parser.add_argument("--template", default=env("HERALD_TEMPLATE", "welcome"))
    # A fresh address per run: Herald allows 3 notifications of a type per recipient a day.
    parser.add_argument("--to", default=f"example+{uuid.uuid4().hex[:12]}@example.com")
    parser.add_argument("--proto-dir", default=str(REPOSITORY / "proto"))
    return parser.parse_args()


def main() -> None:
    args = arguments()
    common, submit, submit_grpc = load_stubs(Path(args.proto_dir))

    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(args.server, credentials, options) as channel:
        client = submit_grpc.SubmitServiceStub(channel)

        request = submit.SubmitRequest(
            template=submit.TemplateRef(key=args.template),
            recipients=[submit.Recipient(email=args.to, locale="en")],
            channels=[common.CHANNEL_EMAIL],
            priority=common.PRIORITY_NORMAL,
            # Derive the key from your own data (an order id, an event id) so that a retry
            # after a timeout carries the same key.
            idempotency_key=f"python-example-{uuid.uuid4()}",
        )
        request.parameters.update({"username": "Ada", "item_name": "order #1001"})

        first = client.Submit(request, timeout=10)
        print(f"submitted: id={first.notification_id} duplicate={str(first.duplicate).lower()}")

        replay = client.Submit(request, timeout=10)
        print(f"replayed: id={replay.notification_id} duplicate={str(replay.duplicate).lower()}")
        if replay.notification_id != first.notification_id or not replay.duplicate:
            sys.exit("the replay with the same idempotency key created a new notification")

        answer = client.GetNotification(
            submit.GetNotificationRequest(notification_id=first.notification_id), timeout=10
        )
        notification = answer.notification
        status = submit.NotificationStatus.Name(notification.status)
        print(f"status: id={notification.id} status={status}")
        for delivery in notification.deliveries:
            channel_name = common.Channel.Name(delivery.channel)
            state = submit.DeliveryState.Name(delivery.state)
            print(f"  delivery {delivery.id}: {channel_name} {state}")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        sys.exit(f"herald answered {error.code().name}: {error.details()}")
