"""aiosmtpd handlers for Herald's tests."""

from aiosmtpd.handlers import Mailbox


class BouncingMailbox(Mailbox):
    """A Maildir mailbox that hard-bounces recipients whose local part starts with `bounce`,
    at RCPT time with 550 5.1.1, the way a receiving server rejects an unknown mailbox."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("bounce"):
            return "550 5.1.1 The email account that you tried to reach does not exist"
        envelope.rcpt_tos.append(address)
        return "250 OK"
