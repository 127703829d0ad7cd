//! The cast of a synthetic history: the "self" persona, friends and group chats.

/// One WeChat account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub wxid: String,
    pub nickname: String,
    /// The remark self gave this contact ("" when none).
    pub remark: String,
    pub alias: String,
    /// True for people self added as friends (group-only members are false).
    pub friend: bool,
}

impl Person {
    /// remark > nickname > id, as WeChat shows it.
    pub fn display_name(&self) -> &str {
        if !self.remark.is_empty() {
            &self.remark
        } else if !self.nickname.is_empty() {
            &self.nickname
        } else {
            &self.wxid
        }
    }
}

/// A group chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// Indices into `Cast::people` (self is always a member and not listed).
    pub members: Vec<usize>,
    /// Conversation flavour, picks the topics talked about.
    pub flavour: GroupFlavour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupFlavour {
    Roommates,
    Work,
    Family,
}

/// Everyone in the history.
#[derive(Debug, Clone)]
pub struct Cast {
    pub me: Person,
    pub people: Vec<Person>,
    pub groups: Vec<Group>,
}

impl Cast {
    /// The fixed cast. Names are invented; wxids follow WeChat's `wxid_` + 14 chars shape.
    pub fn standard() -> Cast {
        let p = |wxid: &str, nickname: &str, remark: &str, alias: &str, friend: bool| Person {
            wxid: wxid.to_string(),
            nickname: nickname.to_string(),
            remark: remark.to_string(),
            alias: alias.to_string(),
            friend,
        };
        let me = p("wxid_ajie0k3m9x2q21", "阿杰", "", "ajie_cool", true);
        let people = vec![
            p("wxid_hu3hang7v2m8k22", "胡三行", "老胡", "husanhang", true), // 0 gaming buddy, teases
            p("wxid_xiaoyu5p1q0r9s12", "小鱼儿", "女朋友", "yu_xiao", true), // 1 girlfriend
            p("wxid_zhoushifu8d2k4l22", "周师傅", "驾校周师傅", "", true),  // 2 driving instructor
            p("wxid_linlin3e9f0g1h22", "林琳", "", "linlin_93", true),      // 3 colleague
            p("wxid_daxiong6t7u8v9w22", "大熊", "室友大熊", "daxiong", true), // 4 roommate, baits
            p("wxid_mama2a3b4c5d6e22", "妈妈", "老妈", "", true),           // 5 mum
            p("wxid_wangzong9x8y7z6w22", "王建国", "王总", "wjg_boss", true), // 6 boss
            p("wxid_acheng4r5s6t7u22", "阿成", "", "acheng", true),         // 7 old friend, baits
            p("wxid_xiaomei1n2o3p4q22", "小美", "", "", false),             // 8 group-only
            p("wxid_laoliu5j6k7l8m22", "老刘", "", "", false),              // 9 group-only
            p("wxid_baba7g8h9i0j1k22", "爸爸", "老爸", "", true),           // 10 dad
        ];
        let groups = vec![
            Group {
                id: "20473895561@chatroom".into(),
                name: "404宿舍永不熄灯".into(),
                members: vec![0, 4, 7, 9],
                flavour: GroupFlavour::Roommates,
            },
            Group {
                id: "34868845452@chatroom".into(),
                name: "项目冲刺小组".into(),
                members: vec![3, 6, 8, 9],
                flavour: GroupFlavour::Work,
            },
            Group {
                id: "18826377103@chatroom".into(),
                name: "相亲相爱一家人".into(),
                members: vec![5, 10],
                flavour: GroupFlavour::Family,
            },
        ];
        Cast { me, people, groups }
    }

    pub fn friends(&self) -> impl Iterator<Item = (usize, &Person)> {
        self.people.iter().enumerate().filter(|(_, p)| p.friend)
    }

    pub fn person_by_wxid(&self, wxid: &str) -> Option<&Person> {
        if self.me.wxid == wxid {
            return Some(&self.me);
        }
        self.people.iter().find(|p| p.wxid == wxid)
    }
}
