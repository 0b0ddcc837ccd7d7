"""
The wire names of our protocol extensions, shared by the server and the
client (docs/compatibility.md, "Extensions").

Output acknowledgement: a client asks for it with C{"outputAcks": true} in
C{initialize}'s params (an extra member, which the reference ignores); a
server that has it answers with C{"outputAcks": {"maxUnackedBytes": B,
"maxUnackedChunks": C}} beside C{sessionId}. The client then sends
C{process/ack} notifications C{{"processId": P, "seq": N}}: it has every
event of P up to N. The server never evicts output that is not
acknowledged, and reads no more of a child while B bytes or C chunks of its
output are unacknowledged. C{process/read} with C{afterSeq} N acknowledges N
too.
"""

ACK_FIELD = "outputAcks"
ACK_METHOD = "process/ack"
