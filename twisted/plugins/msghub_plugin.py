from twisted.application.service import ServiceMaker

msghub = ServiceMaker(
    "msghub",
    "msghub.tap",
    "An HTTP-to-messaging hub speaking plain and compact HTTP.",
    "msghub",
)
