// fixpeer: a QuickFIX session, as the trading client (initiator) or as the venue (acceptor),
// driven by commands on stdin and reporting every message and session event on stdout.
//
// The tests of the FIX gateway put one at each end of the relay: the engine that checks
// sequence numbers, BodyLength, CheckSum, required fields (with QuickFIX's own data
// dictionary) and answers ResendRequests is QuickFIX, not code of this project.
//
//   fixpeer client|venue SETTINGS_FILE
// stdin:  order ID SYMBOL SIDE QTY PRICE | cancel ID ORIGID SYMBOL SIDE QTY | testreq ID
//         | gap N (expect the next incoming MsgSeqNum N lower: provokes a ResendRequest)
//         | seq | quit
// stdout: one event a line: "logon", "logout", "seq|NEXT_SENDER|NEXT_TARGET",
//         "app_in|<msg>", "admin_in|<msg>", "admin_out|<msg>", "app_out|<msg>" (SOH as '|').
#include <quickfix/Application.h>
#include <quickfix/FileLog.h>
#include <quickfix/FileStore.h>
#include <quickfix/Message.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/SocketAcceptor.h>
#include <quickfix/SocketInitiator.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>

static std::mutex out_mu;

static void say(const std::string& line) {
  std::lock_guard<std::mutex> g(out_mu);
  std::cout << line << std::endl;
}

static std::string wire(const FIX::Message& m) {
  std::string s = m.toString();
  std::replace(s.begin(), s.end(), '\x01', '|');
  return s;
}

static std::string field(const FIX::FieldMap& m, int tag) {
  return m.isSetField(tag) ? m.getField(tag) : "";
}

class Peer : public FIX::Application {
 public:
  explicit Peer(bool venue) : venue_(venue) {}
  FIX::SessionID sid;
  void onCreate(const FIX::SessionID& s) override { sid = s; }
  void onLogon(const FIX::SessionID&) override { say("logon"); }
  void onLogout(const FIX::SessionID&) override { say("logout"); }
  void toAdmin(FIX::Message& m, const FIX::SessionID&) override { say("admin_out|" + wire(m)); }
  void toApp(FIX::Message& m, const FIX::SessionID&) throw(FIX::DoNotSend) override {
    say("app_out|" + wire(m));
  }
  void fromAdmin(const FIX::Message& m, const FIX::SessionID&)
      throw(FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
            FIX::RejectLogon) override {
    say("admin_in|" + wire(m));
  }
  void fromApp(const FIX::Message& m, const FIX::SessionID& s)
      throw(FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
            FIX::UnsupportedMessageType) override {
    say("app_in|" + wire(m));
    // A venue answers each ClOrdID once: a resent order (PossDupFlag) it already has is not
    // filled again, one it never saw is.
    if (venue_ && seen_.insert(field(m, 11)).second) answer(m, s);
  }

 private:
  bool venue_;
  int n_ = 0;
  std::set<std::string> seen_;

  // The venue fills every new order and acknowledges every cancel (an ExecutionReport with
  // the fields its FIX version requires).
  void answer(const FIX::Message& in, const FIX::SessionID& s) {
    std::string type = field(in.getHeader(), 35);
    if (type != "D" && type != "F" && type != "G") return;
    bool fix42 = s.getBeginString().getValue() == "FIX.4.2";
    FIX::Message er;
    er.getHeader().setField(35, "8");
    ++n_;
    er.setField(37, "V" + std::to_string(n_));
    er.setField(17, "X" + std::to_string(n_));
    if (fix42) er.setField(20, "0");
    er.setField(11, field(in, 11));
    er.setField(55, field(in, 55));
    er.setField(54, field(in, 54));
    er.setField(38, field(in, 38));
    if (type == "D") {
      er.setField(150, fix42 ? "2" : "F");
      er.setField(39, "2");
      er.setField(32, field(in, 38));
      er.setField(31, field(in, 44).empty() ? "1" : field(in, 44));
      er.setField(151, "0");
      er.setField(14, field(in, 38));
      er.setField(6, field(in, 44).empty() ? "1" : field(in, 44));
    } else {
      er.setField(41, field(in, 41));
      er.setField(150, type == "F" ? "4" : "5");
      er.setField(39, type == "F" ? "4" : "5");
      er.setField(151, "0");
      er.setField(14, "0");
      er.setField(6, "0");
    }
    FIX::Session::sendToTarget(er, s);
  }
};

static void send_order(const FIX::SessionID& s, std::istringstream& in) {
  std::string id, sym, side, qty, px;
  in >> id >> sym >> side >> qty >> px;
  FIX::Message m;
  m.getHeader().setField(35, "D");
  m.setField(11, id);
  m.setField(21, "1");
  m.setField(55, sym);
  m.setField(54, side);
  m.setField(60, FIX::UtcTimeStampConvertor::convert(FIX::UtcTimeStamp()));
  m.setField(38, qty);
  m.setField(40, "2");
  m.setField(44, px);
  FIX::Session::sendToTarget(m, s);
}

static void send_cancel(const FIX::SessionID& s, std::istringstream& in) {
  std::string id, orig, sym, side, qty;
  in >> id >> orig >> sym >> side >> qty;
  FIX::Message m;
  m.getHeader().setField(35, "F");
  m.setField(11, id);
  m.setField(41, orig);
  m.setField(55, sym);
  m.setField(54, side);
  m.setField(60, FIX::UtcTimeStampConvertor::convert(FIX::UtcTimeStamp()));
  m.setField(38, qty);
  FIX::Session::sendToTarget(m, s);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: fixpeer client|venue SETTINGS_FILE" << std::endl;
    return 2;
  }
  bool venue = std::string(argv[1]) == "venue";
  try {
    FIX::SessionSettings settings(argv[2]);
    Peer app(venue);
    FIX::FileStoreFactory store(settings);
    FIX::FileLogFactory logs(settings);
    std::unique_ptr<FIX::Acceptor> acceptor;
    std::unique_ptr<FIX::Initiator> initiator;
    if (venue) {
      acceptor.reset(new FIX::SocketAcceptor(app, store, settings, logs));
      acceptor->start();
    } else {
      initiator.reset(new FIX::SocketInitiator(app, store, settings, logs));
      initiator->start();
    }
    say("started");
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::string cmd;
      in >> cmd;
      FIX::Session* session = FIX::Session::lookupSession(app.sid);
      if (cmd == "quit") break;
      if (session == nullptr) continue;
      if (cmd == "order") {
        send_order(app.sid, in);
      } else if (cmd == "cancel") {
        send_cancel(app.sid, in);
      } else if (cmd == "testreq") {
        std::string id;
        in >> id;
        FIX::Message m;
        m.getHeader().setField(35, "1");
        m.setField(112, id);
        FIX::Session::sendToTarget(m, app.sid);
      } else if (cmd == "gap") {
        int n = 0;
        in >> n;
        session->setNextTargetMsgSeqNum(std::max(1, session->getExpectedTargetNum() - n));
      } else if (cmd == "seq") {
        say("seq|" + std::to_string(session->getExpectedSenderNum()) + "|" +
            std::to_string(session->getExpectedTargetNum()));
      }
    }
    if (venue) acceptor->stop(true); else initiator->stop(true);
  } catch (std::exception& e) {
    std::cerr << "fixpeer: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
