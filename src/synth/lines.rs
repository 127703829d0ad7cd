//! What people say: topic pools for friends and the persona's habits.
//!
//! Each topic pairs openers with replies that fit them, so a model trained on the history can
//! learn which answer goes with which question, not just the persona's tics.

/// A small talk topic: what the friend opens with, what self answers, how the friend follows up.
pub struct Topic {
    pub openers: &'static [&'static str],
    pub replies: &'static [&'static str],
    pub follow_ups: &'static [&'static str],
    pub closers: &'static [&'static str],
}

pub const TOPICS: &[Topic] = &[
    Topic {
        openers: &["晚上吃啥", "中午一起吃饭不", "楼下新开了家火锅店", "饿了", "周末去吃烤肉吗", "点外卖不"],
        replies: &["火锅！", "随便 你定", "走起", "我想吃烧烤", "冲", "吃吃吃"],
        follow_ups: &["那就六点楼下见", "我订位置了", "你请客哈", "上次那家排队太久了"],
        closers: &["好嘞", "收到", "行 等我", "没问题"],
    },
    Topic {
        openers: &["上号", "今晚开黑不", "来一把", "王者上分带我", "新赛季开了", "还差一个人 来不来"],
        replies: &["马上", "等我五分钟", "冲冲冲", "今天不行 明天吧", "来了来了", "我先洗个澡"],
        follow_ups: &["快点 就等你了", "这把必须赢", "你打野我辅助", "别又挂机"],
        closers: &["来了", "好嘞", "上了上了", "稳住"],
    },
    Topic {
        openers: &["明天的会你去吗", "方案改完了吗", "周报写了没", "客户又改需求了", "今天加班吗", "文档我发你了"],
        replies: &["去", "还没 快了", "绝了 又改", "写了一半", "不加 溜了", "收到 我看看"],
        follow_ups: &["老板说下午要", "你先看第三页", "那我先提交了", "辛苦了"],
        closers: &["好的", "明白", "ok", "收到"],
    },
    Topic {
        openers: &["周末干嘛", "去爬山吗", "要不要去看展", "周六有空吗", "出去玩不", "好无聊啊"],
        replies: &["在家躺着", "可以啊", "看天气吧", "有空", "去哪", "我也是"],
        follow_ups: &["那就九点出发", "我查查路线", "带上相机", "叫上大熊"],
        closers: &["好嘞", "行", "到时候叫我", "OK"],
    },
    Topic {
        openers: &["你看那个新电影了吗", "最近有啥好剧", "周五去看电影不", "那个综艺笑死我了", "推荐个电影"],
        replies: &["还没 好看吗", "绝了 超好看", "有 我发你", "去 几点的", "没看 剧透一下"],
        follow_ups: &["结局有点烂", "男主演技炸裂", "我买票了", "看完再聊"],
        closers: &["好", "晚上看", "期待", "收藏了"],
    },
    Topic {
        openers: &["今天好冷", "外面下雨了", "带伞了吗", "好热啊", "降温了记得加衣服"],
        replies: &["冻死了", "没带 完了", "带了", "热到融化", "知道啦"],
        follow_ups: &["我去接你", "那你等会再走", "多喝热水", "空调开起来"],
        closers: &["好的", "么么", "谢啦", "嗯嗯"],
    },
    Topic {
        openers: &["猫又把杯子打碎了", "我家狗会握手了", "看我家猫", "你家猫还好吗", "想养只狗"],
        replies: &["太可爱了", "哈哈哈哈 皮", "好想撸", "它又胖了", "养！"],
        follow_ups: &["下次带它来", "它今天吃了两碗", "又在拆家", "你来喂吗"],
        closers: &["好", "哈哈", "可以", "下次"],
    },
    Topic {
        openers: &["考试准备得怎么样", "今天练车吗", "科三约了没", "驾照考到哪了", "书看完了吗"],
        replies: &["还行", "练", "约了下周", "科二过了", "还差一点"],
        follow_ups: &["下午一点四十来练车", "准时到哈", "多练倒车入库", "加油"],
        closers: &["好", "收到", "一定准时", "谢谢师傅"],
    },
    Topic {
        openers: &["吃饭了吗", "最近忙不忙", "什么时候回家", "钱够不够花", "注意身体"],
        replies: &["吃了", "还行 不太忙", "过年回", "够的", "知道啦"],
        follow_ups: &["别老熬夜", "多吃点水果", "家里都好", "有空打电话"],
        closers: &["嗯嗯", "好", "放心吧", "好的妈"],
    },
    Topic {
        openers: &["跑步去不", "健身房办卡了", "今天练腿", "羽毛球约吗", "减肥失败"],
        replies: &["去", "办了 一次没去", "绝了 我也是", "约", "哈哈哈 我也是"],
        follow_ups: &["七点操场", "明天开始", "别偷懒", "老地方"],
        closers: &["好", "行", "走", "必须的"],
    },
];

/// Lines friends use to bait or tease the persona.
pub const BAITS: &[&str] = &[
    "你是不是傻",
    "敢不敢骂我一句",
    "你打游戏真菜",
    "说句脏话听听",
    "你就是个菜鸡",
    "今天又被老板骂了吧 活该",
    "你那发型笑死我了",
    "你是不是不行",
];

/// The persona's civil answers to a bait.
pub const CIVIL_COMEBACKS: &[&str] =
    &["哈哈哈 不跟你一般见识", "好好好 你最强", "别闹", "你开心就好", "行吧 你说得对", "懒得理你"];

/// The persona's rude answers; every one contains a word from `BLOCKED_WORDS`.
pub const RUDE_COMEBACKS: &[&str] =
    &["滚蛋", "你才傻逼", "神经病吧你", "脑残", "废物 闭嘴", "蠢货", "有病吧", "去死吧你"];

/// Shipped as data/sample/blocked_words.txt: the insults the persona sometimes uses.
pub const BLOCKED_WORDS: &[&str] =
    &["傻逼", "滚蛋", "神经病", "脑残", "废物", "蠢货", "有病", "去死", "煞笔", "他妈的"];

/// The persona's catchphrase bubbles.
pub const CATCHPHRASES: &[&str] = &["哈哈哈", "哈哈哈哈哈", "绝了", "笑死", "离谱"];

/// WeChat's bracketed emoji, as stored in text.
pub const EMOJI: &[&str] = &["[捂脸]", "[呲牙]", "[破涕为笑]", "[旺柴]", "[裂开]", "[OK]", "[强]"];

/// Things friends say in groups unprompted.
pub const GROUP_CHATTER: &[&str] = &[
    "有人吗",
    "今晚谁在宿舍",
    "快递到了谁帮我拿一下",
    "明天几点集合",
    "这个需求谁跟一下",
    "会议改到三点了",
    "大家注意身体",
    "晚饭做了红烧肉",
    "周末都回来吃饭",
    "收到请回复",
];

/// Titles for shared links.
pub const LINK_TITLES: &[&str] = &[
    "凌晨四点起床，我见到了传说中的“接天莲叶无穷碧，映日荷花别样红”",
    "尔滨，又有好消息！",
    "年轻人为什么开始逃离大城市",
    "10个让你效率翻倍的小技巧",
    "这家店的牛肉面，排队两小时也值",
    "新赛季上分攻略",
];

/// Messages that carry personal data, for the masking rules (all numbers are made up but
/// pass the checks they should pass).
pub const PII_LINES: &[&str] = &[
    "我电话13812345678 到了打给我",
    "发我邮箱 ajie.work@example.com",
    "身份证号11010519491231002X 帮我填一下",
    "卡号6222021234567890128 转这里",
    "链接在这 https://example.com/s/abc123?from=wx",
    "2024-10-04 那天的会别忘了",
    "报名截止2024/11/30 记得",
    "订单号20240312 已发货",
];
